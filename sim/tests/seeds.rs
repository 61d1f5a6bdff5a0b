//! CI's share of the simulator: 2,000 seeds, every invariant.

#[test]
fn two_thousand_seeds_keep_every_invariant() {
    let (ok, failures) = veil_sim::run_many(0, 2000);
    let failures: Vec<String> = failures.iter().map(ToString::to_string).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(ok, 2000);
}
