//! The bounded label values a request carries into metrics and the access log, as enums: a value
//! outside these sets cannot be written. Route and kind names come from the core's `Route` and
//! `Target` (`name()`, `kind()`), which are enums already.

/// How the client reached modgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Through the proxy listener (HTTPS_PROXY, CONNECT or absolute-form http://).
    Connect,
    /// A connection redirected to the gateway-mode listener.
    Transparent,
    /// modgate's own request, e.g. a checksum-database lookup to verify a fill.
    Internal,
    /// To the GOPROXY endpoint (`endpoint.listen`, `GOPROXY=https://gateway...`).
    Endpoint,
}

/// What the cache did for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    /// Served from an expired entry because the upstream failed.
    Stale,
    /// Waited for another request's fill of the same entry.
    Coalesced,
    /// Not a cacheable request.
    Bypass,
}

/// How a request's exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole response was sent.
    Complete,
    /// The response body failed part-way (its source broke).
    UpstreamError,
    /// The client went away during the response body.
    ClientGone,
    /// The client went away before the response head (status 499).
    ClientClosed,
}

macro_rules! label {
    ($ty:ty { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, for initialising labelled metric families.
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(<$ty>::$variant => $s),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label!(Mode {
    Connect => "connect",
    Transparent => "transparent",
    Internal => "internal",
    Endpoint => "endpoint",
});
label!(CacheOutcome {
    Hit => "hit",
    Miss => "miss",
    Stale => "stale",
    Coalesced => "coalesced",
    Bypass => "bypass",
});
label!(Outcome {
    Complete => "complete",
    UpstreamError => "upstream_error",
    ClientGone => "client_gone",
    ClientClosed => "client_closed",
});
