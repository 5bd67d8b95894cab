//! The naive client the benchmarks compare against: what a first script does. One `GET` per
//! UPN, one `POST …/members/$ref` per member, one request at a time, no `$batch`, no client-side
//! limiter; it honours `Retry-After` on 429 and 503 and nothing more.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::env::Env;

/// Adds every user of `upns` to the scoped group. Bounded by `limit` of wall time and 50
/// attempts per request.
pub async fn converge(env: &Env, upns: &[String], limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let base = env.sim.base_url();
    let http = reqwest::Client::new();
    let token = token(&http, env).await?;
    let group = env.sim.user_group_id();
    for upn in upns {
        // `users('…')` takes any UPN, a leading `$` and `#EXT#` included.
        let key = upn.replace('\'', "''").replace('#', "%23");
        let url = format!("{base}/v1.0/users('{key}')?$select=id");
        let user = send(deadline, || http.get(&url).bearer_auth(&token)).await?;
        let id = user["id"]
            .as_str()
            .ok_or_else(|| format!("user {upn}: no id in the answer"))?
            .to_string();
        let url = format!("{base}/v1.0/groups/{group}/members/$ref");
        let body = serde_json::json!({
            "@odata.id": format!("{base}/v1.0/directoryObjects/{id}"),
        });
        send(deadline, || http.post(&url).bearer_auth(&token).json(&body)).await?;
    }
    Ok(())
}

async fn token(http: &reqwest::Client, env: &Env) -> Result<String, String> {
    let url = format!(
        "{}/{}/oauth2/v2.0/token",
        env.sim.base_url(),
        env.sim.tenant_id()
    );
    let secret = env.secret();
    let client_id = env.sim.client_id();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id.as_str()),
        ("client_secret", secret.as_str()),
        ("scope", "https://graph.microsoft.com/.default"),
    ];
    let answer: Value = http
        .post(url)
        .form(&form)
        .send()
        .await
        .map_err(|e| format!("token request: {e}"))?
        .json()
        .await
        .map_err(|e| format!("token answer: {e}"))?;
    answer["access_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "token answer without access_token".to_string())
}

/// Sends until a success, waiting `Retry-After` on 429/503; any other failure is returned.
async fn send(
    deadline: Instant,
    request: impl Fn() -> reqwest::RequestBuilder,
) -> Result<Value, String> {
    for _ in 0..50 {
        if Instant::now() > deadline {
            return Err("out of time".into());
        }
        let resp = request().send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        if status == 429 || status == 503 {
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(1.0);
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            continue;
        }
        if !(200..300).contains(&status) {
            return Err(format!("status {status}"));
        }
        let text = resp.text().await.map_err(|e| e.to_string())?;
        return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
    }
    Err("50 attempts".into())
}
