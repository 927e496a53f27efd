//! The server's own limits, against a real `ebb serve` (issue 13): a client that
//! connects and sends nothing is disconnected after the header-read deadline, and
//! the connection cap never locks out a real caller for longer than that.

use std::io::Read as _;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_disconnected_and_capped() {
    let dir = std::env::temp_dir().join(format!("ebb-limits-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = ebb_test_support::free_port().unwrap();
    let config = dir.join("ebb.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
header-read-timeout = "300ms"
max-connections = 4
[store]
path = "{}"
key-file = "{}"
"#,
            dir.join("data").display(),
            dir.join("host.key").display(),
        ),
    )
    .unwrap();
    let mut host = ebb_test_support::serve_command(env!("CARGO_BIN_EXE_ebb"), &config)
        .spawn()
        .unwrap();
    assert!(
        ebb_test_support::wait_for_port(port, Duration::from_secs(10)),
        "the host did not start"
    );
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
    host.kill().unwrap();
    host.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    println!("a real caller waited {waited:?} behind 8 silent clients (cap 4, deadline 300 ms)");
}
