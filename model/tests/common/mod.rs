//! Builds small ONNX models in memory, so the importer can be tested on
//! operators and structures that the shipped models do not contain.
#![allow(dead_code)]

use prost::Message;
use tract_onnx::pb;

pub struct Graph {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    input_dims: Vec<i64>,
    output: String,
    metadata: Vec<(String, String)>,
}

pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(&'static str),
}

impl Graph {
    /// `input_dims` excludes the batch dimension, which is symbolic.
    pub fn new(input_dims: &[i64]) -> Graph {
        Graph {
            nodes: Vec::new(),
            inits: Vec::new(),
            input_dims: input_dims.to_vec(),
            output: "input".into(),
            metadata: Vec::new(),
        }
    }

    pub fn init(&mut self, name: &str, dims: &[i64], data: Vec<f32>) -> String {
        self.inits.push(pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: 1,
            float_data: data,
            ..Default::default()
        });
        name.into()
    }

    pub fn init_i64(&mut self, name: &str, data: Vec<i64>) -> String {
        self.inits.push(pb::TensorProto {
            name: name.into(),
            dims: vec![data.len() as i64],
            data_type: 7,
            int64_data: data,
            ..Default::default()
        });
        name.into()
    }

    /// Appends a node whose first input is the current output (if `inputs`
    /// starts with "") and makes its output the new current output.
    pub fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
    ) -> &mut Graph {
        let out = format!("{name}_out");
        let inputs = inputs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i == 0 && s.is_empty() {
                    self.output.clone()
                } else {
                    s.to_string()
                }
            })
            .collect();
        let attribute = attrs
            .iter()
            .map(|(n, a)| {
                let mut p = pb::AttributeProto {
                    name: n.to_string(),
                    ..Default::default()
                };
                match a {
                    Attr::Int(i) => {
                        p.i = *i;
                        p.r#type = 2;
                    }
                    Attr::Ints(v) => {
                        p.ints = v.clone();
                        p.r#type = 7;
                    }
                    Attr::Float(f) => {
                        p.f = *f;
                        p.r#type = 1;
                    }
                    Attr::Str(s) => {
                        p.s = s.as_bytes().to_vec();
                        p.r#type = 3;
                    }
                }
                p
            })
            .collect();
        self.nodes.push(pb::NodeProto {
            input: inputs,
            output: vec![out.clone()],
            name: name.into(),
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
        self.output = out;
        self
    }

    pub fn metadata(&mut self, key: &str, value: &str) -> &mut Graph {
        self.metadata.push((key.into(), value.into()));
        self
    }

    pub fn bounds(&mut self, lo: f64, hi: f64) -> &mut Graph {
        let n: i64 = self.input_dims.iter().product();
        let b = vec![[lo, hi]; n as usize];
        let json = serde_json::to_string(&b).unwrap();
        self.metadata(veil_model::INPUT_BOUNDS_KEY, &json)
    }

    fn value_info(name: &str, dims: Option<&[i64]>) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::{Dimension, dimension::Value};
        let shape = dims.map(|d| {
            let mut dim = vec![Dimension {
                denotation: String::new(),
                value: Some(Value::DimParam("batch".into())),
            }];
            dim.extend(d.iter().map(|v| Dimension {
                denotation: String::new(),
                value: Some(Value::DimValue(*v)),
            }));
            pb::TensorShapeProto { dim }
        });
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                denotation: String::new(),
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape,
                })),
            }),
            doc_string: String::new(),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let graph = pb::GraphProto {
            node: self.nodes.clone(),
            name: "test".into(),
            initializer: self.inits.clone(),
            input: vec![Self::value_info("input", Some(&self.input_dims))],
            output: vec![Self::value_info(&self.output, None)],
            ..Default::default()
        };
        let model = pb::ModelProto {
            ir_version: 7,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            producer_name: "veil-model tests".into(),
            graph: Some(graph),
            metadata_props: self
                .metadata
                .iter()
                .map(|(k, v)| pb::StringStringEntryProto {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            ..Default::default()
        };
        model.encode_to_vec()
    }
}

/// Deterministic pseudo-random values in `[-scale, scale]` (splitmix64).
pub fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * scale
        })
        .collect()
}

pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

pub fn models_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}
