//! The order's vocabulary: its lifecycle (which transitions exist and the
//! event each one emits), its channels and priorities. The database enforces
//! the same values (enum types) and the same edges (a trigger).

use serde::{Deserialize, Serialize};

/// Where an order is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Taken in.
    Created,
    /// Checked: it can be fulfilled.
    Validated,
    /// Stock reserved.
    Reserved,
    /// Being picked and packed.
    Fulfilling,
    /// The parcel left (terminal).
    Shipped,
    /// Cancelled before fulfilment (terminal).
    Cancelled,
    /// Could not be fulfilled (terminal).
    Failed,
}

impl Status {
    /// Every status.
    pub const ALL: [Self; 7] = [
        Self::Created,
        Self::Validated,
        Self::Reserved,
        Self::Fulfilling,
        Self::Shipped,
        Self::Cancelled,
        Self::Failed,
    ];

    /// The database's (and the API's) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Validated => "VALIDATED",
            Self::Reserved => "RESERVED",
            Self::Fulfilling => "FULFILLING",
            Self::Shipped => "SHIPPED",
            Self::Cancelled => "CANCELLED",
            Self::Failed => "FAILED",
        }
    }

    /// The status named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether nothing follows it.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Shipped | Self::Cancelled | Self::Failed)
    }

    /// Whether `self → to` is an edge of the lifecycle:
    /// `CREATED → VALIDATED → RESERVED → FULFILLING → SHIPPED`, `CANCELLED`
    /// from any state before `FULFILLING`, `FAILED` from any non-terminal one.
    pub fn can_become(self, to: Self) -> bool {
        use Status::*;
        match to {
            Validated => self == Created,
            Reserved => self == Validated,
            Fulfilling => self == Reserved,
            Shipped => self == Fulfilling,
            Cancelled => matches!(self, Created | Validated | Reserved),
            Failed => !self.is_terminal(),
            Created => false,
        }
    }

    /// The states `to` may be reached from.
    pub fn sources(to: Self) -> Vec<Self> {
        Self::ALL
            .into_iter()
            .filter(|from| from.can_become(to))
            .collect()
    }

    /// The event a transition into this status emits.
    pub fn event(self) -> EventType {
        match self {
            Self::Created => EventType::OrderCreated,
            Self::Validated => EventType::OrderValidated,
            Self::Reserved => EventType::OrderReserved,
            Self::Fulfilling => EventType::OrderFulfilling,
            Self::Shipped => EventType::OrderShipped,
            Self::Cancelled => EventType::OrderCancelled,
            Self::Failed => EventType::OrderFailed,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an order event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    /// The order was taken in (once per order, ever).
    OrderCreated,
    /// → `VALIDATED`.
    OrderValidated,
    /// → `RESERVED`.
    OrderReserved,
    /// → `FULFILLING`.
    OrderFulfilling,
    /// → `SHIPPED`, with the tracking number.
    OrderShipped,
    /// → `CANCELLED`, with the reason.
    OrderCancelled,
    /// → `FAILED`, with the reason.
    OrderFailed,
}

impl EventType {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderCreated => "ORDER_CREATED",
            Self::OrderValidated => "ORDER_VALIDATED",
            Self::OrderReserved => "ORDER_RESERVED",
            Self::OrderFulfilling => "ORDER_FULFILLING",
            Self::OrderShipped => "ORDER_SHIPPED",
            Self::OrderCancelled => "ORDER_CANCELLED",
            Self::OrderFailed => "ORDER_FAILED",
        }
    }
}

/// Where an order came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Channel {
    /// Keyed in by staff.
    Manual,
    /// A Shopify store.
    Shopify,
    /// Anything else.
    Other,
}

impl Channel {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "MANUAL",
            Self::Shopify => "SHOPIFY",
            Self::Other => "OTHER",
        }
    }
}

/// How urgent an order is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Priority {
    /// Whenever.
    Low,
    /// The default.
    #[default]
    Normal,
    /// First.
    High,
}

impl Priority {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "LOW",
            Self::Normal => "NORMAL",
            Self::High => "HIGH",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Status::{self, *};

    #[test]
    fn the_lifecycle_has_exactly_its_edges() {
        let edges: Vec<(Status, Status)> = Status::ALL
            .into_iter()
            .flat_map(|a| Status::ALL.into_iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.can_become(*b))
            .collect();
        assert_eq!(
            edges,
            vec![
                (Created, Validated),
                (Created, Cancelled),
                (Created, Failed),
                (Validated, Reserved),
                (Validated, Cancelled),
                (Validated, Failed),
                (Reserved, Fulfilling),
                (Reserved, Cancelled),
                (Reserved, Failed),
                (Fulfilling, Shipped),
                (Fulfilling, Failed),
            ]
        );
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert!(!s.can_become(s), "{s} → {s}");
        }
        assert_eq!(Status::parse("shipped"), None);
    }
}
