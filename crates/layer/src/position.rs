//! Where a message sits in its group's history: an [`Epoch`] (one run of offsets) and an offset
//! in it. Kept apart from [`history`](crate::history) so that a [`Message`](crate::Message) can
//! carry its position without the message module depending on the history that stores messages.

use std::fmt;
use std::str::FromStr;

/// One run of a group's offsets: 32 random bits, shown as 8 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(u32);

impl Epoch {
    /// A fresh random epoch.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The epoch's 32 bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// The epoch of these 32 bits.
    pub fn from_bits(bits: u32) -> Self {
        Self(bits)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// The text is not 8 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an epoch is 8 hex digits, as the server sent it")]
pub struct InvalidEpoch;

impl FromStr for Epoch {
    type Err = InvalidEpoch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidEpoch);
        }
        u32::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| InvalidEpoch)
    }
}

/// Where a message sits in its group's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The history's run.
    pub epoch: Epoch,
    /// 1 for the first message of the epoch, one more for each message after it.
    pub offset: u64,
}
