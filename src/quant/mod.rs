//! The quantization lab, above `model/`: which type each tensor gets (`mixture`: llama-quantize's
//! presets; `plan`: presets, per-tensor rules and `--tensor-type` files), quantizing a model in
//! memory (`quantize_model`), measuring what it cost (`report`) and drawing the trade-off (`plot`);
//! importance matrices (`imatrix`, `imatrix_stats`); and automatic mixed precision (`auto_mix`):
//! the model's weights (`weights`), damage per tensor and type (`measure`, `measure_proxy`,
//! `measure_kld`, `measure_gradient`), exact file sizes (`file_size`), the budget solver
//! (`allocate`) and its answer as a plan (`auto_plan`); activation quantization
//! (`activations`: dynamic and static ranges, outlier columns, SmoothQuant). The block formats and kernels themselves
//! live one floor down, in [`crate::ggml`].

pub mod activations;
pub mod allocate;
pub mod auto_mix;
pub mod auto_plan;
pub mod file_size;
pub mod imatrix;
pub mod imatrix_stats;
pub mod lowrank;
pub mod measure;
pub mod measure_gradient;
pub mod measure_kld;
pub mod measure_proxy;
pub mod mixture;
pub mod plan;
pub mod plot;
pub mod quantize_model;
pub mod report;
pub mod weights;
