//! Strict option maps: the `#{ ... }` arguments of every scripted function.
//!
//! A typo in an option must not be silently ignored (`#{ lerning_rate: 1e-4 }` would otherwise
//! train with the default). [`Options::new`] rejects unknown keys, naming the key, the nearest
//! valid one and the full list; typed getters accept an integer where a float is expected and
//! name the key when the type is wrong.

use rhai::{Array, Dynamic, Map, INT};

use super::errors::{runtime, ScriptResult};

/// A checked option map; read values with the typed getters.
#[derive(Debug, Clone)]
pub struct Options {
    what: String,
    map: Map,
}

impl Options {
    /// Check `map` against `valid` keys. `what` names the map in errors (`"sft config"`).
    pub fn new(what: &str, map: Map, valid: &[&str]) -> ScriptResult<Self> {
        if let Some(message) = unknown_key_message(map.keys().map(|k| k.as_str()), valid) {
            return Err(runtime(format!("{what}: {message}")));
        }
        Ok(Options {
            what: what.to_string(),
            map,
        })
    }

    fn wrong_type(&self, key: &str, expected: &str, value: &Dynamic) -> Box<rhai::EvalAltResult> {
        runtime(format!(
            "{}: key \"{key}\": expected {expected}, got {} ({value})",
            self.what,
            value.type_name()
        ))
    }

    fn get(&self, key: &str) -> Option<&Dynamic> {
        self.map.get(key).filter(|v| !v.is_unit())
    }

    /// A number; integers are accepted and widened.
    pub fn float(&self, key: &str) -> ScriptResult<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if v.is_float() => Ok(Some(v.as_float().unwrap_or_default())),
            Some(v) if v.is_int() => Ok(Some(v.as_int().unwrap_or_default() as f64)),
            Some(v) => Err(self.wrong_type(key, "a number", v)),
        }
    }

    /// An integer.
    pub fn int(&self, key: &str) -> ScriptResult<Option<INT>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_int()
                .map(Some)
                .map_err(|_| self.wrong_type(key, "an integer", v)),
        }
    }

    /// `true` or `false`.
    pub fn bool(&self, key: &str) -> ScriptResult<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .map_err(|_| self.wrong_type(key, "true or false", v)),
        }
    }

    /// A string.
    pub fn string(&self, key: &str) -> ScriptResult<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if v.is_string() => Ok(Some(v.to_string())),
            Some(v) => Err(self.wrong_type(key, "a string", v)),
        }
    }

    /// An array.
    pub fn array(&self, key: &str) -> ScriptResult<Option<Array>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if v.is_array() => Ok(v.clone().try_cast::<Array>()),
            Some(v) => Err(self.wrong_type(key, "an array", v)),
        }
    }

    /// A nested map (check it in turn with another [`Options::new`]).
    pub fn map(&self, key: &str) -> ScriptResult<Option<Map>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if v.is_map() => Ok(v.clone().try_cast::<Map>()),
            Some(v) => Err(self.wrong_type(key, "a map", v)),
        }
    }

    /// Any value, unchecked (for options that take several shapes).
    pub fn value(&self, key: &str) -> Option<Dynamic> {
        self.get(key).cloned()
    }
}

/// `None` when every key is valid; otherwise the message for the first unknown one.
pub fn unknown_key_message<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    valid: &[&str],
) -> Option<String> {
    let bad = keys.into_iter().find(|k| !valid.contains(k))?;
    let nearest = crate::suggest::nearest(bad, valid.iter().copied())
        .map(|v| format!(" (did you mean \"{v}\"?)"))
        .unwrap_or_default();
    Some(format!(
        "unknown key \"{bad}\"{nearest}; valid keys: {}",
        valid.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, Dynamic)]) -> Map {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), v.clone()))
            .collect()
    }

    #[test]
    fn unknown_key_is_named_with_suggestion_and_valid_list() {
        let m = map(&[("lerning_rate", Dynamic::from(1e-4))]);
        let err = Options::new("sft config", m, &["learning_rate", "epochs"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Runtime error: sft config: unknown key \"lerning_rate\" (did you mean \
             \"learning_rate\"?); valid keys: learning_rate, epochs"
        );
    }

    #[test]
    fn integer_is_accepted_for_a_float_but_not_the_reverse() {
        let m = map(&[("lr", Dynamic::from(2_i64)), ("steps", Dynamic::from(1.5))]);
        let o = Options::new("cfg", m, &["lr", "steps", "absent"]).unwrap();
        assert_eq!(o.float("lr").unwrap(), Some(2.0));
        assert_eq!(o.float("absent").unwrap(), None);
        let err = o.int("steps").unwrap_err().to_string();
        assert!(
            err.contains("cfg: key \"steps\": expected an integer, got f64"),
            "{err}"
        );
    }
}
