//! Cheap-to-clone handles for values scripts pass around.
//!
//! Rhai clones a value every time a native function takes it by value. A dataset or a model must
//! therefore cross into scripts as a [`Handle`]: cloning one copies a pointer, never the data.
//! Every type later areas expose (Dataset, Model, Run, Curve, ...) follows this rule.

use std::ops::Deref;
use std::sync::Arc;

/// A shared, immutable value; `clone` is a reference-count increment.
#[derive(Debug, Default)]
pub struct Handle<T>(Arc<T>);

impl<T> Handle<T> {
    /// Wrap `value` for sharing with scripts.
    pub fn new(value: T) -> Self {
        Handle(Arc::new(value))
    }

    /// Whether two handles point at the same value (no copy was made between them).
    pub fn same(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Handle(Arc::clone(&self.0))
    }
}

impl<T> Deref for Handle<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhai::{Engine, INT};

    /// 4 MB of payload: a deep copy per call would be obvious.
    type Big = Handle<Vec<u8>>;

    #[test]
    fn passing_a_handle_by_value_does_not_copy_the_data() {
        let mut engine = Engine::new();
        engine.register_type_with_name::<Big>("Big");
        let big = Big::new(vec![7u8; 4 << 20]);
        let address = big.as_ptr() as INT;
        engine.register_fn("data_address", |b: Big| b.as_ptr() as INT);
        let mut scope = rhai::Scope::new();
        scope.push("big", big.clone());
        let seen: INT = engine
            .eval_with_scope(&mut scope, "let copy = big; data_address(copy)")
            .unwrap();
        assert_eq!(seen, address, "the script received a deep copy");
        let back: Big = scope.get_value("big").unwrap();
        assert!(Handle::same(&back, &big));
    }
}
