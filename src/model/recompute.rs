//! Gradient checkpointing (Hugging Face's `gradient_checkpointing`, on by default in
//! LLaMA-Factory): a training pass that keeps only each block's input for the backward pass, and
//! recomputes one block at a time on the way back, instead of keeping every activation of every
//! block alive from the forward pass to the backward pass.
//!
//! What it saves: the activations a block's backward pass reads (its norms' outputs, the query,
//! key and value heads, the attention probabilities — B·H·T² values —, the MLP's gate, up and
//! product) for all blocks but one; what stays is one (B, T, C) input per block. What it costs:
//! each block runs forward twice, about a third more work per step.
//!
//! The backward pass through block i starts from the gradient g of its output: the gradient of
//! sum(out ⊙ g) with respect to anything in the block is the chain rule's, since its gradient
//! with respect to `out` is g itself. Dropout draws the same masks the second time (the
//! generator's state before each block is kept and restored), so the gradients are the values
//! the whole-graph pass computes; the tests check them bit for bit.

use candle_core::{Tensor, Var};

use super::llama::{Llama, Pass, TrainInputs};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// A training pass that has run forward and kept what its backward pass recomputes from.
pub struct Checkpointed<'a> {
    llama: &'a Llama,
    pass: Pass<'a>,
    ids: Tensor,
    inputs: TrainInputs,
    /// Each block's input and the dropout generator's state before the block, in block order.
    saved: Vec<(Tensor, Option<Rng>)>,
    /// The generator's state after the last block, where the next pass goes on from.
    after: Option<Rng>,
    /// The last block's output, where the head's gradient is taken.
    last: Var,
    loss: Tensor,
}

impl Llama {
    /// The training pass of [`Llama::forward_train`] that keeps only each block's input; `head`
    /// turns the logits (N, V) into the scalar loss to differentiate. Call
    /// [`Checkpointed::backward`] for the gradients.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_checkpointed<'a>(
        &'a self,
        ids: &Tensor,
        positions: &[u32],
        segments: Option<&[u32]>,
        rows: &Tensor,
        pass: Pass<'a>,
        head: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Checkpointed<'a>> {
        if !pass.train {
            return Err(Error::msg(
                "forward_checkpointed: only a training pass has a backward pass to recompute for",
            ));
        }
        if pass.observe.is_some() {
            return Err(Error::msg(
                "forward_checkpointed: an observer would see every block twice; observe a plain training pass",
            ));
        }
        let inputs = self.train_inputs(ids, positions, segments)?;
        let generator = pass.dropout.map(|d| d.rng);
        let mut saved = Vec::with_capacity(self.blocks.len());
        // Each output is cut from the graph, which frees the block's activations at once.
        let mut x = self.embed(ids)?.detach();
        for i in 0..self.blocks.len() {
            let state = generator.map(|g| g.borrow().clone());
            let out = self.train_block(i, &x, &inputs, pass)?.detach();
            saved.push((std::mem::replace(&mut x, out), state));
        }
        let after = generator.map(|g| g.borrow().clone());
        let last = Var::from_tensor(&x)?;
        drop(x);
        let loss = head(&self.train_logits(last.as_tensor(), rows, pass)?)?;
        Ok(Checkpointed {
            llama: self,
            pass,
            ids: ids.clone(),
            inputs,
            saved,
            after,
            last,
            loss,
        })
    }
}

impl Checkpointed<'_> {
    /// The loss `head` made.
    pub fn loss(&self) -> &Tensor {
        &self.loss
    }

    /// The gradient of the loss with respect to each of `vars`, in their order (None where the
    /// loss does not depend on one), detached from every graph.
    pub fn backward(self, vars: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let Checkpointed {
            llama,
            pass,
            ids,
            inputs,
            mut saved,
            after,
            last,
            loss,
        } = self;
        let mut grads = vec![None; vars.len()];
        let store = loss.backward()?;
        // The head's graph (the logits among it) is done with.
        drop(loss);
        add_gradients(&store, vars, &mut grads)?;
        let mut upstream = gradient_of(&store, last.as_tensor(), llama.blocks.len())?;
        drop(store);
        // Blocks below the lowest one that trains need no backward pass, unless the embedding
        // trains; that block's input needs no gradient either (as the whole-graph pass, which
        // records no graph below the first trained weight).
        let embedding_trains = llama.embed.is_variable();
        let lowest = if embedding_trains {
            0
        } else {
            (0..llama.blocks.len())
                .find(|&i| block_trains(llama, pass, i))
                .unwrap_or(llama.blocks.len())
        };
        while let Some((input, state)) = saved.pop() {
            let i = saved.len();
            if i < lowest {
                break;
            }
            if let (Some(d), Some(state)) = (pass.dropout, state) {
                *d.rng.borrow_mut() = state;
            }
            let needs_gradient = i > lowest || embedding_trains;
            let input = if needs_gradient {
                Var::from_tensor(&input)?.as_tensor().clone()
            } else {
                input
            };
            let out = llama.train_block(i, &input, &inputs, pass)?;
            let store = (out * &upstream)?.sum_all()?.backward()?;
            add_gradients(&store, vars, &mut grads)?;
            if needs_gradient {
                upstream = gradient_of(&store, &input, i)?;
            }
        }
        if embedding_trains {
            let store = (llama.embed(&ids)? * &upstream)?.sum_all()?.backward()?;
            add_gradients(&store, vars, &mut grads)?;
        }
        if let (Some(d), Some(after)) = (pass.dropout, after) {
            *d.rng.borrow_mut() = after;
        }
        Ok(grads)
    }
}

/// Whether block `i` holds something that trains: an adapter pair, or a weight that is a
/// variable (full and freeze fine-tuning).
fn block_trains(llama: &Llama, pass: Pass, i: usize) -> bool {
    use crate::lora::Target;
    use crate::model::linear::Weight;
    let block = &llama.blocks[i];
    let targets = Target::ALL;
    let adapted = pass
        .adapter
        .is_some_and(|a| targets.iter().any(|&t| a.pair(i, t).is_some()));
    let weights = targets.iter().any(|&t| {
        let linear = block.linear(t);
        matches!(&linear.weight, Weight::Dense(w) if w.is_variable())
            || linear.bias.as_ref().is_some_and(Tensor::is_variable)
    });
    adapted || weights || block.attn_norm.is_variable() || block.mlp_norm.is_variable()
}

/// Add each of `vars`' gradients in `store` to `grads`.
fn add_gradients(
    store: &candle_core::backprop::GradStore,
    vars: &[Var],
    grads: &mut [Option<Tensor>],
) -> Result<()> {
    for (slot, var) in grads.iter_mut().zip(vars) {
        if let Some(g) = store.get(var.as_tensor()) {
            // Detached: a gradient built from the block's tensors would keep its graph alive.
            let g = g.detach();
            *slot = Some(match slot.take() {
                Some(sum) => (sum + g)?,
                None => g,
            });
        }
    }
    Ok(())
}

/// The gradient that reached block `i`'s input `x` (i = the number of blocks: the head's input).
fn gradient_of(store: &candle_core::backprop::GradStore, x: &Tensor, i: usize) -> Result<Tensor> {
    store.get(x).map(Tensor::detach).ok_or_else(|| {
        Error::msg(format!(
            "gradient checkpointing: no gradient reached the input of block {i}"
        ))
    })
}
