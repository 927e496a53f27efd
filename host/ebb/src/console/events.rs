//! `GET /console/events`: server-sent events, one `grant` event per committed
//! change of a grant the person may see (`{"id", "state"}`), so open pages update
//! without reloading. A person who sees only their own grants gets only theirs. A
//! receiver that fell behind gets one `refresh` event. The stream ends when the
//! host shuts down, so it never holds a graceful shutdown open.

use super::ConsoleState;
use super::session::SignedIn;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use ebb_engine::lifecycle::GrantChange;
use futures_util::stream::Stream;
use std::convert::Infallible;
use tokio::sync::broadcast::error::RecvError;

pub async fn stream(
    State(state): State<ConsoleState>,
    who: SignedIn,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let sees_all = super::roles_of(&who.principal).sees_all();
    let me = who.principal.id.clone();
    let changes = state.app.lifecycle.subscribe();
    let closing = state.console.closing.subscribe();
    let events = futures_util::stream::unfold(
        (changes, closing, sees_all, me),
        |(mut changes, mut closing, sees_all, me)| async move {
            loop {
                let next = tokio::select! {
                    next = changes.recv() => next,
                    _ = closing.wait_for(|c| *c) => return None,
                };
                let event = match next {
                    Ok(change) if sees_all || change.requested_by == me => grant_event(&change),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => Event::default().event("refresh").data("{}"),
                    Err(RecvError::Closed) => return None,
                };
                return Some((Ok(event), (changes, closing, sees_all, me)));
            }
        },
    );
    Sse::new(events).keep_alive(KeepAlive::default())
}

fn grant_event(change: &GrantChange) -> Event {
    Event::default()
        .event("grant")
        .data(serde_json::json!({ "id": change.id, "state": change.state.as_str() }).to_string())
}
