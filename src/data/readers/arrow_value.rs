//! Arrow columns → JSON values, for the Parquet and Arrow readers.
//!
//! Strings, booleans, integers and floats map to their JSON counterparts; list columns become
//! arrays and struct columns objects (recursively), so a Parquet file of ShareGPT conversations
//! (`list<struct<from, value>>`) converts like the JSON it was made from. Dictionary-encoded
//! strings are decoded. Any other type is an error naming the column and its type.

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use serde_json::{Number, Value};

use super::Row;

/// The value of `array` at `row`; `Err` holds the unsupported type's name.
pub fn value_at(array: &dyn Array, row: usize) -> Result<Value, String> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    let float = |x: f64| Number::from_f64(x).map_or(Value::Null, Value::Number);
    Ok(match array.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_string()),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).into(),
        DataType::Float16 => float(array.as_primitive::<Float16Type>().value(row).to_f64()),
        DataType::Float32 => float(array.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(row)),
        DataType::List(_) => list(&array.as_list::<i32>().value(row))?,
        DataType::LargeList(_) => list(&array.as_list::<i64>().value(row))?,
        DataType::FixedSizeList(..) => list(&array.as_fixed_size_list().value(row))?,
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut obj = Row::new();
            for (i, field) in fields.iter().enumerate() {
                obj.insert(field.name().clone(), value_at(s.column(i).as_ref(), row)?);
            }
            Value::Object(obj)
        }
        DataType::Dictionary(key, _) => {
            let (keys, values) = match key.as_ref() {
                DataType::Int8 => dict_key(array.as_dictionary::<Int8Type>(), row),
                DataType::Int16 => dict_key(array.as_dictionary::<Int16Type>(), row),
                DataType::Int32 => dict_key(array.as_dictionary::<Int32Type>(), row),
                DataType::Int64 => dict_key(array.as_dictionary::<Int64Type>(), row),
                DataType::UInt8 => dict_key(array.as_dictionary::<UInt8Type>(), row),
                DataType::UInt16 => dict_key(array.as_dictionary::<UInt16Type>(), row),
                DataType::UInt32 => dict_key(array.as_dictionary::<UInt32Type>(), row),
                DataType::UInt64 => dict_key(array.as_dictionary::<UInt64Type>(), row),
                other => return Err(format!("dictionary with {other} keys")),
            };
            value_at(values.as_ref(), keys)?
        }
        other => return Err(other.to_string()),
    })
}

fn dict_key<K: ArrowDictionaryKeyType>(
    dict: &arrow_array::DictionaryArray<K>,
    row: usize,
) -> (usize, ArrayRef) {
    let key = dict.key(row).unwrap_or(0);
    (key, dict.values().clone())
}

fn list(items: &ArrayRef) -> Result<Value, String> {
    (0..items.len())
        .map(|i| value_at(items.as_ref(), i))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// Every row of `batch` as a JSON object; `Err` holds `(column, type)` of an unsupported column.
pub fn batch_rows(batch: &RecordBatch) -> Result<Vec<Row>, (String, String)> {
    let schema = batch.schema();
    let mut rows = vec![Row::new(); batch.num_rows()];
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        for (r, row) in rows.iter_mut().enumerate() {
            let value = value_at(column.as_ref(), r).map_err(|t| (field.name().clone(), t))?;
            row.insert(field.name().clone(), value);
        }
    }
    Ok(rows)
}
