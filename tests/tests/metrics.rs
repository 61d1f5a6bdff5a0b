//! The servers' latency histograms on their Prometheus endpoints count
//! exactly the frames done, in buckets that never fall.

use veil_e2e::*;
use veil_shell::scrape::Scraped;

const FRAMES: u64 = 4;

async fn histogram(addr: std::net::SocketAddr, name: &str, count: u64) -> Scraped {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        // A's confirmation and B's last turn may still be in their
        // workers when the agent has its results.
        let page = scrape(addr).await;
        let scraped = Scraped::histogram(&page, name);
        if let Some(h) = &scraped
            && h.count >= count
        {
            assert!(h.is_monotone(), "{page}");
            return h.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{name}: {page}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_histograms_count_the_frames_done() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker("127.0.0.1:0".parse().unwrap()).await;
    let mut servers = Servers::new(dir.path(), "pima-mlp", broker.local_addr());
    servers.start().await;
    let any = "127.0.0.1:0".parse().unwrap();
    let a = servers.a.as_ref().expect("A runs").stats_handle();
    let a_addr = veil_server_a::cli::serve_metrics(any, a)
        .await
        .expect("A's metrics");
    let b = servers.b.as_ref().expect("B runs").stats_handle();
    let b_addr = veil_server_b::cli::serve_metrics(any, b)
        .await
        .expect("B's metrics");
    let mut agent = start_agent(agent_options(
        dir.path(),
        "devA",
        broker.local_addr(),
        servers.pins(),
    ))
    .await;
    for (x, _) in pima_rows().iter().take(FRAMES as usize) {
        agent.capture(x, None).expect("captured");
    }
    collect(&mut agent, FRAMES as usize).await;
    assert_eq!(agent.latency().count(), FRAMES);

    let frame = histogram(a_addr, "veil_server_a_frame_latency_seconds", FRAMES).await;
    assert_eq!(frame.count, FRAMES);
    let result = histogram(b_addr, "veil_server_b_result_latency_seconds", FRAMES).await;
    assert_eq!(result.count, FRAMES);
    // Every frame takes one round or more at B (its output is one).
    histogram(b_addr, "veil_server_b_round_latency_seconds", FRAMES).await;
    agent.shutdown().await;
    servers.stop().await;
}
