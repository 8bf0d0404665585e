//! What a request costs: US dollars per million tokens, split as DeepSeek bills (prompt
//! tokens served from the cache, prompt tokens computed, generated tokens).

use serde::{Deserialize, Serialize};

use crate::wire::{Cost, Currency};

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// Prompt tokens served from the prefix cache.
    pub input_cache_hit: f64,
    /// Prompt tokens computed.
    pub input_cache_miss: f64,
    /// Generated tokens (reasoning included).
    pub output: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Self::DEEPSEEK_R1_LAUNCH
    }
}

/// A price that is negative or not a number.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the price {name} is {value}; prices are US dollars per million tokens, 0 or more")]
pub struct BadPrice {
    /// Which price.
    pub name: &'static str,
    /// Its value.
    pub value: f64,
}

impl Prices {
    /// DeepSeek-R1's API prices at its launch (January 2025), for comparison:
    /// $0.14 cache hit, $0.55 cache miss, $2.19 output, per million tokens.
    pub const DEEPSEEK_R1_LAUNCH: Prices = Prices {
        input_cache_hit: 0.14,
        input_cache_miss: 0.55,
        output: 2.19,
    };

    /// Checks that every price is finite and not negative.
    pub fn check(&self) -> Result<(), BadPrice> {
        for (name, value) in [
            ("input_cache_hit", self.input_cache_hit),
            ("input_cache_miss", self.input_cache_miss),
            ("output", self.output),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(BadPrice { name, value });
            }
        }
        Ok(())
    }

    /// The cost of `hit` cached prompt tokens, `miss` computed ones and `output` generated ones.
    pub fn cost(&self, hit: usize, miss: usize, output: usize) -> Cost {
        let per = |n: usize, price: f64| n as f64 * price / 1e6;
        let (h, m, o) = (
            per(hit, self.input_cache_hit),
            per(miss, self.input_cache_miss),
            per(output, self.output),
        );
        Cost {
            currency: Currency::Usd,
            input_cache_hit: h,
            input_cache_miss: m,
            output: o,
            total: h + m + o,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_million_output_tokens_cost_the_output_price() {
        let c = Prices::DEEPSEEK_R1_LAUNCH.cost(0, 0, 1_000_000);
        assert!((c.output - 2.19).abs() < 1e-12);
        let c = Prices::DEEPSEEK_R1_LAUNCH.cost(2_000_000, 1_000_000, 0);
        assert!((c.input_cache_hit - 0.28).abs() < 1e-12);
        assert!((c.input_cache_miss - 0.55).abs() < 1e-12);
        assert!((c.total - 0.83).abs() < 1e-12);
    }

    #[test]
    fn negative_prices_are_refused() {
        let p = Prices {
            output: -1.0,
            ..Prices::default()
        };
        assert_eq!(p.check().unwrap_err().name, "output");
        assert!(Prices::default().check().is_ok());
    }
}
