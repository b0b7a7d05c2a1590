//! The tunelab script equivalent to a `tunelab train CONFIG.yaml` run, for users who want to move
//! from configs to scripts: every setting that differs from `sft`'s own defaults, under the names
//! `sft` takes (LLaMA-Factory's).

use serde_json::Value;

use super::plan::TrainPlan;
use crate::train::SftConfig;

/// Keys of `training_args.json` that are not `sft` options, or are written another way.
const NOT_OPTIONS: &[&str] = &["stage", "eval_dataset", "output_dir"];

/// The LoRA keys of `training_args.json` and their names in `sft`'s `lora` map.
const LORA: &[(&str, &str)] = &[
    ("lora_rank", "rank"),
    ("lora_alpha", "alpha"),
    ("lora_dropout", "dropout"),
    ("lora_target", "targets"),
    ("use_rslora", "rslora"),
];

/// A Rhai literal for a JSON value (strings quoted, floats with a decimal point).
fn literal(v: &Value) -> String {
    match v {
        // Rust's Display never uses an exponent; Rhai needs the decimal point of a float.
        Value::Number(n) if n.is_f64() => {
            let text = n.as_f64().unwrap_or(0.0).to_string();
            if text.contains('.') {
                text
            } else {
                format!("{text}.0")
            }
        }
        other => other.to_string(),
    }
}

/// The script, commented, for `plan` read from `config_name`.
pub fn train_script(plan: &TrainPlan, config_name: &str) -> String {
    let mut s = format!(
        "// The tunelab script equivalent to `tunelab train {config_name}`.\n// Run it with: tunelab run THIS_FILE.rhai\n\n"
    );
    if plan.bf16 {
        s.push_str(&format!(
            "let model = load_model({}, #{{ dtype: \"bf16\" }});   // bf16: true (on a CPU: autocast with AVX512-BF16, else f32)\n",
            Value::from(plan.model.path.clone())
        ));
    } else {
        s.push_str(&format!(
            "let model = load_model({});\n",
            Value::from(plan.model.path.clone())
        ));
    }
    for a in &plan.model.adapters {
        s.push_str(&format!(
            "model = merge(model, load_adapter({}));   // create_new_adapter: merged, then a new adapter\n",
            Value::from(a.display().to_string())
        ));
    }
    let load = |name: &str| {
        let mut opts = vec![format!(
            "dir: {}",
            Value::from(plan.dataset_dir.display().to_string())
        )];
        if let Some(n) = plan.max_samples {
            opts.push(format!("max_samples: {n}"));
        }
        format!("dataset({}, #{{ {} }})", Value::from(name), opts.join(", "))
    };
    let chain = |names: &[String]| {
        let mut it = names.iter();
        let first = it.next().map(|n| load(n)).unwrap_or_default();
        it.fold(first, |acc, n| format!("{acc}\n    .concat({})", load(n)))
    };
    s.push_str(&format!("let data = {};\n", chain(&plan.datasets)));
    if !plan.eval_datasets.is_empty() {
        s.push_str(&format!(
            "let eval_data = {};\n",
            chain(&plan.eval_datasets)
        ));
    }
    let ours = plan.sft.to_json();
    let defaults = SftConfig::default().to_json();
    let mut options = Vec::new();
    let mut lora = Vec::new();
    if let (Some(ours), Some(defaults)) = (ours.as_object(), defaults.as_object()) {
        for (key, value) in ours {
            if NOT_OPTIONS.contains(&key.as_str()) || defaults.get(key) == Some(value) {
                continue;
            }
            if let Some((_, name)) = LORA.iter().find(|(k, _)| k == key) {
                lora.push(format!("{name}: {}", literal(value)));
            } else if !value.is_null() {
                let name = if key == "early_stopping_steps" {
                    "early_stopping_patience"
                } else {
                    key
                };
                options.push(format!("{name}: {}", literal(value)));
            }
        }
    }
    if let Some(out) = &plan.sft.out {
        options.push(format!("out: {}", Value::from(out.display().to_string())));
    }
    if !plan.eval_datasets.is_empty() {
        options.push("eval_dataset: eval_data".into());
    }
    if !lora.is_empty() {
        options.push(format!("lora: #{{ {} }}", lora.join(", ")));
    }
    if plan.overwrite_output_dir {
        s.push_str("// overwrite_output_dir: sft refuses an out folder that holds a run; delete it first.\n");
    }
    s.push_str("let run = sft(model, data, #{\n");
    for o in &options {
        s.push_str(&format!("    {o},\n"));
    }
    s.push_str("});\nprint(run);\n");
    s
}
