fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30000);
    let m = kube_nft_proxy::synthetic::model(n, 10);
    let rs = kube_nft_proxy::ruleset::build::build(&m, &Default::default());
    print!("{}", kube_nft_proxy::ruleset::render::ruleset(&rs));
}
