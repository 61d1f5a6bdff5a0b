//! What every run shares: the model, the keys, A's rounding secret.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use veil_model::{CompiledModel, Topology};
use veil_paillier::SecretKey;
use veil_paillier::fixtures::{key_2048_a, key_2048_b};
use veil_protocol::{I256, Params, Seed, SessionId, frame_rounding};

pub struct Fixture {
    pub model: CompiledModel,
    /// Encoded rows of the held-out Pima set: inputs within the range the
    /// model's bounds were fitted to.
    pub rows: Vec<Vec<i64>>,
    pub topology: Arc<Topology>,
    pub a_key: Arc<SecretKey>,
    pub b_key: Arc<SecretKey>,
    pub rounding_key: Seed,
}

fn owned(key: &SecretKey) -> Arc<SecretKey> {
    Arc::new(SecretKey::from_bytes(&key.to_bytes()).expect("fixture keys copy"))
}

/// Loaded once per process.
pub fn fixture() -> &'static Fixture {
    static CELL: OnceLock<Fixture> = OnceLock::new();
    CELL.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/pima-mlp.plan");
        let model = CompiledModel::load(&path).expect("the shipped pima-mlp plan loads");
        let topology = Arc::new(model.topology().clone());
        let data = veil_model::data::load_pima(
            &veil_model::data::workspace_data_dir().join("pima-test.csv"),
        )
        .expect("the shipped Pima test set loads");
        let rows = data
            .features
            .iter()
            .filter_map(|f| model.encode_input(f).ok())
            .collect();
        Fixture {
            model,
            rows,
            topology,
            a_key: owned(key_2048_b()),
            b_key: owned(key_2048_a()),
            rounding_key: Seed::from_bytes([42; 32]),
        }
    })
}

impl Fixture {
    /// The integer reference of frame `t` of session `sid`.
    pub fn reference(&self, params: &Params, x_hat: &[i64], sid: SessionId, t: u64) -> Vec<I256> {
        let rounding = frame_rounding(&self.rounding_key, sid, t);
        let modes = params.modes(&self.topology);
        match self.model.run_int(x_hat, &modes, &rounding) {
            Ok(out) => out.into_iter().map(I256::from).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// One of the held-out rows, at random.
    pub fn input(&self, rng: &mut crate::SimRng) -> Vec<i64> {
        let i = rng.below(self.rows.len() as u64) as usize;
        self.rows.get(i).cloned().unwrap_or_default()
    }
}
