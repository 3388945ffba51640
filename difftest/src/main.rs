mod casefile;
mod model;
mod net;
mod prng;

#[cfg(test)]
mod agreement;

fn main() {}
