//! A custom message kind: `location`, with a body check, alongside the built-in `text`.
//!
//! Run: `cargo run -p im-server --example custom_kind`, then post
//! `{"to":{"user":2},"kind":"location","body":{"lat":52.5,"lon":13.4,"label":"Berlin"}}`.

use im_server::{Config, ImServer, KindSpec};
use serde_json::Value;

/// `{"lat": -90..90, "lon": -180..180, "label"?: string up to 100 chars}`.
pub(crate) fn location_kind() -> KindSpec {
    KindSpec::new("location").validator(|body: &Value| {
        let obj = body.as_object().ok_or("body must be an object")?;
        if let Some(k) = obj
            .keys()
            .find(|k| !["lat", "lon", "label"].contains(&k.as_str()))
        {
            return Err(format!("unknown field `{k}`"));
        }
        let lat = obj
            .get("lat")
            .and_then(Value::as_f64)
            .ok_or("`lat` must be a number")?;
        let lon = obj
            .get("lon")
            .and_then(Value::as_f64)
            .ok_or("`lon` must be a number")?;
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            return Err("coordinates out of range".into());
        }
        match obj.get("label") {
            None => Ok(()),
            Some(Value::String(s)) if s.chars().count() <= 100 => Ok(()),
            Some(_) => Err("`label` must be a string of at most 100 characters".into()),
        }
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_, config) = Config::load(std::env::args().skip(1), std::env::vars())?;
    let server = ImServer::builder()
        .config(config)
        .kind(location_kind())
        .bind()
        .await?;
    println!("custom-kind server on http://{}", server.local_addr()?);
    server.run_until_signal().await?;
    Ok(())
}
