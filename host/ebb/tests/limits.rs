//! The server's own limits, against a real `ebb serve` (issue 13): a client that
//! connects and sends nothing is disconnected after the header-read deadline, and
//! the connection cap never locks out a real caller for longer than that.

use std::io::Read as _;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_disconnected_and_capped() {
    let host = ebb_test_support::Host::start(
        env!("CARGO_BIN_EXE_ebb"),
        "limits",
        "header-read-timeout = \"300ms\"\nmax-connections = 4",
        "",
    )
    .unwrap();
    let port = host.port;
    // Eight silent clients: twice the cap.
    let silent: Vec<std::net::TcpStream> = (0..8)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // A real caller still gets through once the silent ones are dropped.
    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let waited = started.elapsed();
    // Every silent client is disconnected (its read ends) rather than held.
    for mut stream in silent {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Whatever the server says last (nothing, or a 408), the read then ends.
        let mut said = Vec::new();
        match stream.read_to_end(&mut said) {
            Ok(_) => {}
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "a silent client was still held after 10 s: {e}"
            ),
        }
    }
    drop(host);
    println!("a real caller waited {waited:?} behind 8 silent clients (cap 4, deadline 300 ms)");
}
