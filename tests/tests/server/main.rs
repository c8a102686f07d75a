//! Behavioural tests of the reference server over real sockets, each run per backend.

mod chat;
mod extensions;
mod handshake;
mod hostile;
mod http;
mod lifecycle;
mod limits;
mod membership;
mod names;
mod passthrough;
mod stuck_replay;
mod token_dates;
mod typing_budget;
