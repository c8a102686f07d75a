//! WebSocket close codes of PROTOCOL.md and the client behaviour each one asks for.
//!
//! The server refuses a bad token, a non-member or an unknown chat *after* the upgrade,
//! with an application code, because a browser cannot read the HTTP status of a refused
//! handshake and could not tell "wrong token" from "network down".

/// A close code, as sent in the WebSocket close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: normal close, the client asked for it.
    Normal,
    /// 1001: the peer is going away.
    GoingAway,
    /// 1006: no close frame at all (a browser's report of a dropped connection, or a
    /// base-layer server refusing). Never sent on the wire.
    Abnormal,
    /// 1008: policy violation, e.g. repeated rate-limit abuse.
    Policy,
    /// 1009: a frame was larger than the server accepts.
    TooBig,
    /// 1011: the server hit an internal error.
    ServerError,
    /// 1012: the server is restarting (graceful shutdown).
    Restart,
    /// 4401: the token is missing, invalid or expired (also mid-session on expiry).
    Unauthorized,
    /// 4403: the user is not a member of this chat (also when removed mid-session).
    Forbidden,
    /// 4404: there is no such chat.
    NotFound,
    /// 4408: the client did not read its messages fast enough.
    TooSlow,
    /// 4429: too many connections for this user, or connecting too often.
    TooMany,
    /// Any other code, kept so that nothing is lost.
    Other(u16),
}

/// What a client should do after a close, per PROTOCOL.md's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    /// Stay closed; the close was asked for.
    Stop,
    /// Reconnect with backoff (and resume with `since`).
    Reconnect,
    /// Ask the token provider for a new token once, then reconnect.
    RefreshToken,
    /// Give up: reconnecting cannot help (state `failed`).
    Fail,
}

impl CloseCode {
    /// The code from its number.
    pub const fn from_u16(code: u16) -> Self {
        match code {
            1000 => Self::Normal,
            1001 => Self::GoingAway,
            1006 => Self::Abnormal,
            1008 => Self::Policy,
            1009 => Self::TooBig,
            1011 => Self::ServerError,
            1012 => Self::Restart,
            4401 => Self::Unauthorized,
            4403 => Self::Forbidden,
            4404 => Self::NotFound,
            4408 => Self::TooSlow,
            4429 => Self::TooMany,
            other => Self::Other(other),
        }
    }

    /// The number sent on the wire.
    pub const fn as_u16(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::Abnormal => 1006,
            Self::Policy => 1008,
            Self::TooBig => 1009,
            Self::ServerError => 1011,
            Self::Restart => 1012,
            Self::Unauthorized => 4401,
            Self::Forbidden => 4403,
            Self::NotFound => 4404,
            Self::TooSlow => 4408,
            Self::TooMany => 4429,
            Self::Other(code) => code,
        }
    }

    /// What the SDK does after this close.
    ///
    /// Unknown codes reconnect with backoff: giving up on a code we do not know would
    /// strand users after a server upgrade.
    pub const fn action(self) -> CloseAction {
        match self {
            Self::Normal => CloseAction::Stop,
            Self::Unauthorized => CloseAction::RefreshToken,
            Self::Forbidden | Self::NotFound => CloseAction::Fail,
            _ => CloseAction::Reconnect,
        }
    }

    /// A short reason for the close frame and for logs (never holds a token).
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Normal => "normal close",
            Self::GoingAway => "going away",
            Self::Abnormal => "connection lost",
            Self::Policy => "policy violation",
            Self::TooBig => "message too big",
            Self::ServerError => "server error",
            Self::Restart => "service restart",
            Self::Unauthorized => "token missing, invalid or expired",
            Self::Forbidden => "not a member of this chat",
            Self::NotFound => "no such chat",
            Self::TooSlow => "client too slow",
            Self::TooMany => "too many connections",
            Self::Other(_) => "closed",
        }
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        Self::from_u16(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.as_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_of_the_table_round_trips_through_its_number() {
        for n in [
            1000, 1001, 1006, 1008, 1009, 1011, 1012, 4401, 4403, 4404, 4408, 4429,
        ] {
            let code = CloseCode::from_u16(n);
            assert!(!matches!(code, CloseCode::Other(_)), "{n} is in the table");
            assert_eq!(code.as_u16(), n);
        }
        assert_eq!(CloseCode::from_u16(4000), CloseCode::Other(4000));
        assert_eq!(CloseCode::Other(4000).as_u16(), 4000);
    }

    #[test]
    fn close_actions_follow_the_protocol_table() {
        use CloseAction::*;
        let expected = [
            (1000, Stop),
            (1001, Reconnect),
            (1006, Reconnect),
            (1008, Reconnect),
            (1009, Reconnect),
            (1011, Reconnect),
            (1012, Reconnect),
            (4401, RefreshToken),
            (4403, Fail),
            (4404, Fail),
            (4408, Reconnect),
            (4429, Reconnect),
            (4999, Reconnect),
        ];
        for (n, action) in expected {
            assert_eq!(CloseCode::from_u16(n).action(), action, "close code {n}");
        }
    }
}
