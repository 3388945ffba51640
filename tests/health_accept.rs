//! Issue 9, review item: when `accept` fails (here EMFILE: the process is out of file
//! descriptors while a connection waits in the backlog), the health and metrics
//! servers retried at once, for ever, spinning a core. They must back off.
//!
//! Alone in its test binary: it lowers this process's file descriptor limit.

use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use kube_nft_proxy::health::{not_found, serve};

fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD with a valid pointer.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

#[test]
fn accept_errors_do_not_spin() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    // Connections the kernel completes into the backlog; accepting one needs a new fd.
    let clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    // SAFETY: getrlimit/setrlimit on structs we own.
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
    // No fd left: `read_dir` above held one more than now, so the count is the limit.
    let low = libc::rlimit {
        rlim_cur: open_fds().saturating_sub(1),
        rlim_max: old.rlim_max,
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    let before = thread_cpu();
    rt.block_on(async {
        let _server = serve(listener, |_| not_found());
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let spent = thread_cpu() - before;
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) };
    drop(clients);
    assert!(
        spent < Duration::from_millis(150),
        "the accept loop used {spent:?} of CPU in 1 s while accept failed"
    );
}
