//! JSON has no NaN or infinity: serde_json writes them as `null`. Metrics are NaN where nothing was
//! measured (a rule that covers no row), so stored summaries hold `null` there and must read back as NaN
//! rather than fail. Use with `#[serde(deserialize_with = "...")]`.

use serde::{Deserialize, Deserializer};

pub fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

pub fn vec_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    Ok(Vec::<Option<f64>>::deserialize(d)?.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
}

pub fn array4_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<[f64; 4], D::Error> {
    let values = <[Option<f64>; 4]>::deserialize(d)?;
    Ok(values.map(|x| x.unwrap_or(f64::NAN)))
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Stored {
        #[serde(deserialize_with = "super::f64_or_nan")]
        one: f64,
        #[serde(deserialize_with = "super::vec_or_nan")]
        many: Vec<f64>,
        #[serde(deserialize_with = "super::array4_or_nan")]
        four: [f64; 4],
    }

    #[test]
    fn non_finite_values_survive_a_round_trip_as_nan() {
        let stored = Stored { one: f64::NAN, many: vec![1.0, f64::NAN], four: [0.0, f64::INFINITY, 2.0, 3.0] };
        let text = serde_json::to_string(&stored).unwrap();
        assert_eq!(text, r#"{"one":null,"many":[1.0,null],"four":[0.0,null,2.0,3.0]}"#);
        let back: Stored = serde_json::from_str(&text).unwrap();
        assert!(back.one.is_nan() && back.many[0] == 1.0 && back.many[1].is_nan() && back.four[1].is_nan());
    }
}
