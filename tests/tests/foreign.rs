//! Server A serving an ONNX file from another exporter (scikit-learn
//! through skl2onnx, none of veil's metadata), imported with the options
//! of server-a.toml's `[onnx]` table (`--calibration`, `--fixed-point`):
//! the code `veil infer` and `veil import` use. Results over real MQTT
//! equal the integer reference of the model so imported.

use std::sync::Arc;

use veil_e2e::*;
use veil_edge_agent::Output;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_a_serves_a_model_without_veil_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server-a.toml");
    let fixture = repo("model/tests/fixtures/pima-sklearn.onnx");
    std::fs::write(
        &config,
        format!(
            "model_file = {:?}\nb_key_file = \"b.pub\"\n[onnx]\ncalibration = {:?}\nfixed_point = \"12,16\"\n",
            fixture.display().to_string(),
            repo("data/pima-train.csv").display().to_string(),
        ),
    )
    .unwrap();
    let config = veil_server_a::Config::load(Some(&config)).expect("configuration loads");
    // Without the options the file is refused: it states no input bounds.
    let bare = veil_server_a::ModelOptions::default().load(&config.model_file);
    assert!(
        matches!(
            &bare,
            Err(veil_server_a::ModelFileError::Import { source, .. })
                if matches!(**source, veil_model::ModelError::MissingInputBounds)
        ),
        "{bare:?}"
    );
    let model = veil_server_a::ModelOptions::default()
        .or(config.onnx.clone())
        .load(&config.model_file)
        .expect("imported with the configured options");
    assert_eq!(model.topology().fixed.frac_bits, 12);
    // Its first layer reads raw features and gets more weight bits than the
    // others: A, B and the reference must all follow each stage's own.
    let bits: Vec<u32> = model
        .topology()
        .stages
        .iter()
        .filter_map(|s| match s {
            veil_model::Stage::Linear(l) => Some(l.weight_bits),
            veil_model::Stage::Activation(_) => None,
        })
        .collect();
    assert!(bits[0] > bits[1], "{bits:?}");

    let broker = start_broker("127.0.0.1:0".parse().unwrap()).await;
    let mut servers = Servers::new(dir.path(), "pima-mlp", broker.local_addr());
    servers.model = Arc::new(model);
    servers.start().await;
    let mut options = agent_options(dir.path(), "devA", broker.local_addr(), servers.pins());
    options.model = servers.model.topology().name.clone();
    let mut agent = start_agent(options).await;
    let rows: Vec<_> = pima_rows().into_iter().take(6).collect();
    let mut captured = Vec::new();
    for (x, _) in &rows {
        let t = agent.capture(x, None).expect("inside the measured bounds");
        captured.push((t, servers.model.encode_input(x).unwrap()));
    }
    let sid = agent.session().expect("a session");
    for output in collect(&mut agent, rows.len()).await {
        let Output::Result(r) = output else {
            panic!("not a result: {output:?}");
        };
        let (_, x_hat) = captured.iter().find(|(t, _)| *t == r.t).expect("captured");
        assert_eq!(r.raw, servers.reference(x_hat, sid, r.t), "frame {}", r.t);
    }
    agent.shutdown().await;
    servers.stop().await;
}
