//! `herald revoke` and `herald block`: an operator's commands for a leaked token or an
//! abusive user, made through a pod's HTTP API (any pod: the change reaches them all).

use std::process::ExitCode;

use crate::config::{AccessArgs, BlockArgs, RevokeArgs};

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// Send one change and print herald's answer; exit 1 with the reason when it is refused.
fn call(
    name: &str,
    api: &AccessArgs,
    method: &str,
    path: String,
    body: serde_json::Value,
) -> ExitCode {
    let run = async {
        let key = crate::config::secret_from(
            api.api_key.clone(),
            api.api_key_file.as_deref(),
            "--api-key",
            "--api-key-file",
        )?;
        let payload = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let (status, answer) = crate::cli::api_request(
            &api.http,
            key.as_ref().map(|k| k.expose()),
            method,
            &path,
            &payload,
        )
        .await?;
        if status != 200 {
            return Err(format!("HTTP {status}: {}", answer.trim()));
        }
        Ok(answer)
    };
    match runtime().and_then(|rt| rt.block_on(run)) {
        Ok(answer) => {
            println!("{}", answer.trim());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald {name}: {e}");
            ExitCode::from(1)
        }
    }
}

pub fn revoke(args: RevokeArgs) -> ExitCode {
    let body = match (args.before, args.jti) {
        (Some(before), None) => {
            let before = if before == "now" {
                crate::auth::now_secs()
            } else {
                match before.parse::<u64>() {
                    Ok(b) => b,
                    Err(_) => {
                        eprintln!("herald revoke: --before takes unix seconds or \"now\"");
                        return ExitCode::from(2);
                    }
                }
            };
            serde_json::json!({ "before": before })
        }
        (None, Some(jti)) => serde_json::json!({ "jti": jti }),
        _ => {
            eprintln!("herald revoke: give --before or --jti");
            return ExitCode::from(2);
        }
    };
    let mut body = body;
    if let Some(ttl) = args.expires_in {
        body["expires"] = (crate::auth::now_secs() + ttl.as_secs()).into();
    }
    let path = format!("/api/v1/users/{}/revoke", args.user);
    call("revoke", &args.api, "POST", path, body)
}

pub fn block(args: BlockArgs) -> ExitCode {
    let path = format!("/api/v1/users/{}/block", args.user);
    if args.remove {
        return call("block", &args.api, "DELETE", path, serde_json::json!({}));
    }
    let until = match (args.until, args.r#for) {
        (Some(u), None) => u,
        (None, Some(d)) => crate::auth::now_secs() + d.as_secs(),
        _ => {
            eprintln!("herald block: give --until <unix seconds>, --for <duration> or --remove");
            return ExitCode::from(2);
        }
    };
    call(
        "block",
        &args.api,
        "POST",
        path,
        serde_json::json!({ "until": until }),
    )
}
