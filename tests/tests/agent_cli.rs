//! The agent's command line as an application sees it: a CSV with a row
//! that is not a number and a row outside the model's bounds still runs
//! its good rows, the two bad ones appear in the output with their row and
//! column, and the run's status says that rows went unanswered.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use veil_e2e::*;
use veil_edge_agent::cli::run;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_refused_in_the_output_and_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker("127.0.0.1:0".parse().unwrap()).await;
    let mut servers = Servers::new(dir.path(), "pima-mlp", broker.local_addr());
    servers.start().await;
    let pins = servers.pins();
    let config = write_agent_config(dir.path(), "pima-mlp", broker.local_addr(), &pins, "");
    let good: Vec<String> = std::fs::read_to_string(repo("data/pima-test.csv"))
        .unwrap()
        .lines()
        .take(4)
        .map(str::to_string)
        .collect();
    // Header, two good rows, one not a number, one far outside the glucose
    // bound, one good row.
    let csv = dir.path().join("frames.csv");
    let mut lines = vec![good[0].clone(), good[1].clone(), good[2].clone()];
    lines.push("1,abc,70,20,30.0,0.5,40,No".into());
    lines.push("1,90000,70,20,30.0,0.5,40,No".into());
    lines.push(good[3].clone());
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    let output = dir.path().join("out.jsonl");
    let outcome = run(agent_args(config, Some(csv), output.clone())).await;
    let error = outcome.expect_err("two rows got no result").to_string();
    assert!(error.contains("2 of 5 frames"), "{error}");
    assert!(error.contains("2 refused at capture"), "{error}");

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let results = lines.iter().filter(|l| l.get("class").is_some()).count();
    assert_eq!(results, 3, "{lines:?}");
    let refused: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["kind"] == "refused-at-capture")
        .collect();
    assert_eq!(refused.len(), 2, "{lines:?}");
    assert_eq!(
        (refused[0]["row"].as_u64(), refused[0]["column"].as_str()),
        (Some(3), Some("glu"))
    );
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not a number")
    );
    assert_eq!(
        (refused[1]["row"].as_u64(), refused[1]["column"].as_str()),
        (Some(4), Some("glu"))
    );
    assert!(
        refused[1]["reason"]
            .as_str()
            .unwrap()
            .contains("outside its bounds")
    );
    servers.stop().await;
}
