//! A tiny `veil bench device` run over the real embedded broker: both
//! approaches finish, agree on the classes, and the JSON carries every
//! figure the evaluation promises.

use veil_bench::{Dataset, DeviceBenchOptions, models_dir, run_device_bench};

#[test]
fn a_two_frame_pima_run_reports_every_figure() {
    let report = run_device_bench(&DeviceBenchOptions {
        model: models_dir().join("pima-mlp.onnx"),
        dataset: Dataset::Pima,
        data_dir: veil_model::data::workspace_data_dir(),
        frames: 2,
        warmup: 0,
        callgrind_exe: None,
        callgrind_frames_veil: 0,
        callgrind_frames_conventional: 0,
        quiet: true,
        own_core: true,
    })
    .expect("benchmark runs");
    let json = serde_json::to_value(&report).expect("serializes");
    // With two CPUs or more the device had one to itself, and the report
    // says which.
    let cpus = veil_bench::cores::allowed().expect("affinity");
    let placement = json["machine"]["device_placement"]
        .as_str()
        .expect("the placement is reported");
    assert_eq!(
        placement.starts_with("own core: the device's thread on CPU"),
        cpus.len() >= 2,
        "{placement} with CPUs {cpus:?}"
    );
    // The test's thread got its CPUs back.
    assert_eq!(veil_bench::cores::allowed().expect("affinity"), cpus);
    for key in [
        "time_ratio",
        "bytes_ratio",
        "wall_ratio",
        "time_ratio_amortized",
        "bytes_ratio_amortized",
        "veil",
        "conventional",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    for key in ["time_ratio_amortized", "bytes_ratio_amortized"] {
        let obj = json[key].as_object().expect("an object");
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 4, "{key}: {keys:?}");
        for n in ["1", "10", "100", "1000"] {
            let r = obj[n].as_f64().expect("a number");
            assert!(r.is_finite() && r > 0.0, "{key}[{n}] = {r}");
        }
    }
    // The baseline encrypts every feature and every hidden activation; veil
    // sends a few masked integers. Anything else means a measurement broke.
    let time = json["time_ratio"].as_f64().expect("number");
    let bytes = json["bytes_ratio"].as_f64().expect("number");
    assert!(time.is_finite() && time > 10.0, "time ratio {time}");
    assert!(bytes.is_finite() && bytes > 5.0, "bytes ratio {bytes}");
    // Amortized ratios grow with the session length towards the steady one
    // (veil's set-up is the cheaper one on the device's CPU).
    let t = &json["time_ratio_amortized"];
    assert!(t["1"].as_f64() < t["1000"].as_f64());
    assert!(t["1000"].as_f64().expect("number") <= time * 1.0001);
    for approach in ["veil", "conventional"] {
        let a = &report_approach(&json, approach);
        assert_eq!(a["frames"].as_array().map(Vec::len), Some(2));
        assert!(a["cpu_us"]["mean"].as_f64() > Some(0.0), "{approach}");
        assert!(a["bytes_sent"]["mean"].as_f64() > Some(0.0), "{approach}");
        assert!(
            a["bytes_received"]["mean"].as_f64() > Some(0.0),
            "{approach}"
        );
        assert!(a["setup"]["bytes_sent"].as_u64() > Some(0), "{approach}");
        assert!(
            a["server"]["a_cpu_online_ms"].as_f64() > Some(0.0),
            "{approach}"
        );
    }
    assert!(report.veil.server.b_cpu_online_ms > 0.0);
    assert!(report.veil.server.ab_bytes > 0.0);
    assert_eq!(report.conventional.server.ab_bytes, 0.0);
    // Every byte the device sent is at least its payload: the veil frame
    // packs 7 features of ℓ + σ + 2 bits.
    assert!(report.veil.bytes_sent.mean > 7.0 * 8.0);
    assert_eq!(report.classes_agree, 2);
    assert!(report.instructions_ratio.is_none());
    assert!(report.instructions_note.is_some());
    let csv = report.to_csv();
    assert!(csv.contains("pima-mlp,ratio,time_ratio,"));
}

fn report_approach(json: &serde_json::Value, name: &str) -> serde_json::Value {
    json.get(name).cloned().expect("approach present")
}
