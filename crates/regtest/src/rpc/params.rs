//! The parameters of a call, by position or by name, as Bitcoin Core binds them.

use super::*;

/// The positional parameters of a call, with Core's checks.
pub struct Params<'a> {
    method: &'a str,
    names: &'static [&'static str],
    values: Vec<Value>,
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl<'a> Params<'a> {
    /// Binds positional (array) or named (object) parameters to `names`, refusing more
    /// than the method takes or fewer than `required`.
    pub(super) fn bind(
        method: &'a str,
        params: &Value,
        names: &'static [&'static str],
        required: usize,
    ) -> Result<Self, RpcError> {
        let values: Vec<Value> = match params {
            Value::Array(values) => values.clone(),
            Value::Object(map) => {
                for key in map.keys() {
                    if !names.contains(&key.as_str()) {
                        return Err(RpcError::new(
                            codes::MISC_ERROR,
                            format!("Unknown named parameter {key}"),
                        ));
                    }
                }
                let mut values: Vec<Value> = names
                    .iter()
                    .map(|name| map.get(*name).cloned().unwrap_or(Value::Null))
                    .collect();
                while values.last().is_some_and(Value::is_null) {
                    values.pop();
                }
                values
            }
            Value::Null => Vec::new(),
            _ => {
                return Err(RpcError::new(
                    codes::INVALID_REQUEST,
                    "Params must be an array or object",
                ));
            }
        };
        if values.len() < required || values.len() > names.len() {
            return Err(RpcError::new(
                codes::MISC_ERROR,
                usage(method, names, required),
            ));
        }
        Ok(Self {
            method,
            names,
            values,
        })
    }

    pub(super) fn get(&self, index: usize) -> Option<&Value> {
        self.values.get(index).filter(|v| !v.is_null())
    }

    pub(super) fn wrong_type(&self, index: usize, expected: &str) -> RpcError {
        let got = self.values.get(index).map(type_name).unwrap_or("null");
        RpcError::new(
            codes::TYPE_ERROR,
            format!(
                "Wrong type passed:\n{{\n    \"Position {} ({})\": \"JSON value of type {got} is not of expected type {expected}\"\n}}",
                index + 1,
                self.names[index]
            ),
        )
    }

    pub(super) fn u64(&self, index: usize) -> Result<Option<u64>, RpcError> {
        match self.get(index) {
            None => Ok(None),
            Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                if value.is_number() {
                    RpcError::new(
                        codes::INVALID_PARAMETER,
                        format!("{} out of range", self.names[index]),
                    )
                } else {
                    self.wrong_type(index, "number")
                }
            }),
        }
    }

    pub(super) fn i64(&self, index: usize) -> Result<Option<i64>, RpcError> {
        match self.get(index) {
            None => Ok(None),
            Some(value) => value
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(index, "number")),
        }
    }

    pub(super) fn str(&self, index: usize) -> Result<Option<&str>, RpcError> {
        match self.get(index) {
            None => Ok(None),
            Some(value) => value
                .as_str()
                .map(Some)
                .ok_or_else(|| self.wrong_type(index, "string")),
        }
    }

    pub(super) fn bool(&self, index: usize) -> Result<Option<bool>, RpcError> {
        match self.get(index) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong_type(index, "bool")),
        }
    }

    pub(super) fn required_str(&self, index: usize) -> Result<&str, RpcError> {
        self.str(index)?.ok_or_else(|| {
            RpcError::new(codes::MISC_ERROR, usage(self.method, self.names, index + 1))
        })
    }

    pub(super) fn array(&self, index: usize) -> Result<&Vec<Value>, RpcError> {
        match self.get(index) {
            Some(Value::Array(values)) => Ok(values),
            _ => Err(self.wrong_type(index, "array")),
        }
    }

    pub(super) fn amount(&self, index: usize) -> Result<Option<Amount>, RpcError> {
        match self.get(index) {
            None => Ok(None),
            Some(Value::Number(number)) => {
                let text = number.to_string();
                Amount::from_str_in(&text, bitcoin::Denomination::Bitcoin)
                    .map(Some)
                    .map_err(|_| RpcError::new(codes::TYPE_ERROR, "Invalid amount"))
            }
            Some(Value::String(text)) => Amount::from_str_in(text, bitcoin::Denomination::Bitcoin)
                .map(Some)
                .map_err(|_| RpcError::new(codes::TYPE_ERROR, "Invalid amount")),
            Some(_) => Err(self.wrong_type(index, "number")),
        }
    }

    /// A fee rate given in BTC/kvB.
    pub(super) fn fee_rate(&self, index: usize) -> Result<Option<FeeRate>, RpcError> {
        Ok(self
            .amount(index)?
            .map(|per_kvb| FeeRate::from_sat_per_kwu(per_kvb.to_sat() / 4)))
    }
}

pub(super) fn usage(method: &str, names: &[&str], required: usize) -> String {
    let args: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            if i < required {
                (*name).to_owned()
            } else {
                format!("( {name} )")
            }
        })
        .collect();
    format!("{method} {}\n", args.join(" ")).replace(" \n", "\n")
}
