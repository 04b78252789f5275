//! `GET /api/v1/history/{userId}` (PROTOCOL §5, §5c): the kept messages after a cursor,
//! paged oldest first, each with the receipts kept beside it; with `unacked=<status>`
//! only those still without such a receipt (from `device=`, when given).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::api::{authorized_user, bad_request, error, unavailable};
use super::AppState;
use crate::ids::DeviceId;
use crate::store::{Audience, Receipts, Stored};

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    since: Option<String>,
    limit: Option<String>,
    device: Option<String>,
    unacked: Option<String>,
}

/// Messages read at a time while looking for unacknowledged ones.
const UNACKED_CHUNK: usize = 500;

pub async fn history(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let user = match authorized_user(&req, &state, &path) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(store) = &state.durable else {
        return error(
            actix_web::http::StatusCode::NOT_FOUND,
            "nothing is kept here: history needs --durable (or, standalone, --history-memory above 0)",
        );
    };
    let max = usize::try_from(store.max_replay()).unwrap_or(usize::MAX);
    let limit = match query.limit.as_deref().map(str::parse::<usize>) {
        None => 100.min(max),
        Some(Ok(n)) if n > 0 => n.min(max),
        Some(_) => return bad_request("limit: a number of messages, at least 1"),
    };
    let device = match query.device.as_deref().map(DeviceId::parse) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return bad_request(format!("device: {e}")),
    };
    if let Some(u) = &query.unacked {
        if !herald_proto::frame::is_valid_status(u) {
            return bad_request("unacked: a receipt status, 1 to 32 bytes of a-z 0-9 _ -");
        }
    }
    let after = match &query.since {
        Some(since) => match store.resume_point(since).await {
            Ok(Ok(after)) => after,
            Ok(Err(refusal)) => {
                return error(
                    actix_web::http::StatusCode::GONE,
                    format!("since cannot be continued: {refusal}"),
                )
            }
            Err(e) => return unavailable(e),
        },
        None => match store.before_oldest().await {
            Ok(after) => after,
            Err(e) => return unavailable(e),
        },
    };
    let audience = match &device {
        Some(d) => Audience::Session(Some(d)),
        None => Audience::All,
    };
    let page = match &query.unacked {
        None => read_page(store.as_ref(), &user, after, audience, limit).await,
        Some(status) => {
            let from_device = device.as_ref().map(|d| d.as_str());
            unacked_page(
                store.as_ref(),
                &user,
                after,
                audience,
                limit,
                status,
                from_device,
            )
            .await
        }
    };
    let (messages, receipts, more) = match page {
        Ok(p) => p,
        Err(e) => return unavailable(e),
    };
    let cursor = messages.last().map_or_else(
        || query.since.clone().unwrap_or_else(|| store.cursor(after)),
        |m| store.cursor(m.seq),
    );
    let frames: Vec<Box<serde_json::value::RawValue>> = messages
        .iter()
        .filter_map(|m| with_receipts(m, receipts.get(&m.id).map(Vec::as_slice)))
        .collect();
    HttpResponse::Ok().json(serde_json::json!({
        "messages": frames,
        "cursor": cursor,
        "more": more,
    }))
}

type Page = (Vec<Stored>, Receipts, bool);

async fn read_page(
    store: &dyn crate::store::Store,
    user: &crate::ids::UserId,
    after: u64,
    audience: Audience<'_>,
    limit: usize,
) -> Result<Page, crate::store::StoreError> {
    let read = store.read(user, after, None, audience, limit).await?;
    let receipts = receipts_of(store, user, &read.messages).await?;
    Ok((read.messages, receipts, read.more))
}

/// The kept messages without a receipt of `status` (from `device` when given): read in
/// chunks, at most `limit`, and `more` when another such message follows.
async fn unacked_page(
    store: &dyn crate::store::Store,
    user: &crate::ids::UserId,
    mut after: u64,
    audience: Audience<'_>,
    limit: usize,
    status: &str,
    device: Option<&str>,
) -> Result<Page, crate::store::StoreError> {
    let mut out = Vec::new();
    let mut receipts = Receipts::new();
    loop {
        let read = store
            .read(user, after, None, audience, UNACKED_CHUNK)
            .await?;
        let found = receipts_of(store, user, &read.messages).await?;
        for m in read.messages {
            after = m.seq;
            let acked = found.get(&m.id).is_some_and(|rs| {
                rs.iter().any(|r| {
                    r.status == status && device.is_none_or(|d| r.device.as_deref() == Some(d))
                })
            });
            if acked {
                continue;
            }
            if out.len() == limit {
                return Ok((out, receipts, true));
            }
            if let Some(rs) = found.get(&m.id) {
                receipts.insert(m.id.clone(), rs.clone());
            }
            out.push(m);
        }
        if !read.more {
            return Ok((out, receipts, false));
        }
    }
}

async fn receipts_of(
    store: &dyn crate::store::Store,
    user: &crate::ids::UserId,
    messages: &[Stored],
) -> Result<Receipts, crate::store::StoreError> {
    let Some(first) = messages.first() else {
        return Ok(Receipts::new());
    };
    let ids: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
    store.receipts(user, &ids, first.seq).await
}

/// A kept message's frame with `"receipts":[{"status","device","session","at"}]` added:
/// spliced in before the frame's closing brace, so the frame's own bytes stay as sent.
fn with_receipts(
    m: &Stored,
    receipts: Option<&[herald_proto::events::Receipt]>,
) -> Option<Box<serde_json::value::RawValue>> {
    let list: Vec<serde_json::Value> = receipts
        .unwrap_or_default()
        .iter()
        .map(|r| {
            serde_json::json!({"status": r.status, "device": r.device, "session": r.session, "at": r.at})
        })
        .collect();
    let frame: &str = &m.frame;
    let body = frame.strip_suffix('}')?;
    let text = format!(
        "{body},\"receipts\":{}}}",
        serde_json::to_string(&list).ok()?
    );
    serde_json::value::RawValue::from_string(text).ok()
}
