//! One batch's loss and its gradients: the whole graph kept from the forward pass to the
//! backward pass, or — with `gradient_checkpointing` — only each block's input, the blocks
//! recomputed one at a time on the way back ([`crate::model::recompute`]). Both give the same
//! gradients; the second holds far fewer activations and runs every block forward twice.

use candle_core::{Tensor, Var};

use super::batch::Batch;
use super::loss::cross_entropy_sum;
use crate::error::Result;
use crate::model::recompute::Checkpointed;
use crate::model::{Model, Pass};

/// A batch's training pass that has run forward: its loss, and what its backward pass needs.
pub enum Forward<'a> {
    /// The loss with the whole graph behind it.
    Graph(Tensor),
    /// The loss with only the blocks' inputs kept.
    Checkpointed(Checkpointed<'a>),
}

/// The forward pass of `batch` (a training `pass`); the loss is the batch's summed token loss
/// divided by `divisor` (the label tokens of the whole step).
pub fn forward<'a>(
    model: &'a Model,
    batch: &Batch,
    pass: Pass<'a>,
    divisor: f64,
    checkpointing: bool,
) -> Result<Forward<'a>> {
    let llama = &model.llama;
    let segments = batch.segments.as_deref();
    let head = |logits: &Tensor| -> Result<Tensor> {
        let (sum, _) = cross_entropy_sum(logits, &batch.targets)?;
        Ok((sum / divisor)?)
    };
    if checkpointing {
        let pass = llama.forward_checkpointed(
            &batch.ids,
            &batch.positions,
            segments,
            &batch.rows,
            pass,
            head,
        )?;
        Ok(Forward::Checkpointed(pass))
    } else {
        let logits =
            llama.forward_train(&batch.ids, &batch.positions, segments, &batch.rows, pass)?;
        Ok(Forward::Graph(head(&logits)?))
    }
}

impl Forward<'_> {
    /// The loss as a number.
    pub fn loss(&self) -> Result<f64> {
        let loss = match self {
            Forward::Graph(loss) => loss,
            Forward::Checkpointed(pass) => pass.loss(),
        };
        Ok(loss.to_scalar::<f32>()? as f64)
    }

    /// The gradient of the loss with respect to each of `vars`, in their order (None where the
    /// loss does not depend on one), detached.
    pub fn backward(self, vars: &[Var]) -> Result<Vec<Option<Tensor>>> {
        match self {
            Forward::Graph(loss) => {
                let store = loss.backward()?;
                // Detached: a gradient computed from the forward pass's tensors would otherwise
                // keep that whole graph alive through the moments built from it.
                Ok(vars
                    .iter()
                    .map(|v| store.get(v.as_tensor()).map(Tensor::detach))
                    .collect())
            }
            Forward::Checkpointed(pass) => pass.backward(vars),
        }
    }
}
