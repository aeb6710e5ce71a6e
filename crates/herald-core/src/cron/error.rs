//! Why a schedule was refused or could not be changed.

use crate::topic::TopicError;

/// A cron schedule was refused, or the one named does not exist.
///
/// ```
/// use herald_core::{CronError, CronSpec};
///
/// let err = CronSpec::new("61 * * * *", "UTC").unwrap_err();
/// assert!(matches!(err, CronError::Expression { .. }));
/// assert!(err.to_string().starts_with("cron expression '61 * * * *' is invalid"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CronError {
    /// The cron expression does not parse.
    #[error(
        "cron expression '{expression}' is invalid ({reason}): use 5 fields (minute hour day-of-month month \
         day-of-week) or 6 with seconds first, such as '0 3 * * *' or '*/10 * * * * *'"
    )]
    Expression {
        /// The refused expression.
        expression: String,
        /// What croner found wrong with it.
        reason: String,
    },
    /// The expression parses but matches no time at all (`0 0 30 2 *`: February 30th).
    #[error("cron expression '{expression}' never fires: no date matches its day and month fields")]
    NeverFires {
        /// The refused expression.
        expression: String,
    },
    /// The time zone is not in the time zone database.
    #[error(
        "time zone '{zone}' is unknown: use an IANA time zone name such as 'UTC', 'Europe/Berlin' or \
         'America/New_York'"
    )]
    TimeZone {
        /// The refused name.
        zone: String,
    },
    /// The schedule's name is not valid.
    #[error(
        "cron name '{name}' is invalid: use 1 to 200 lowercase letters, digits, '_', '-' and dots, such as \
         'nightly-report'"
    )]
    Name {
        /// The refused name.
        name: String,
    },
    /// The topic is missing or invalid.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// No topic was given.
    #[error("cron schedule '{0}' has no topic: set one with `.topic(\"report.nightly\")`")]
    NoTopic(String),
    /// The payload could not be encoded as JSON.
    #[error("the payload of cron schedule '{name}' could not be encoded as JSON: {message}")]
    Payload {
        /// The schedule.
        name: String,
        /// serde_json's message.
        message: String,
    },
    /// A missed-tick policy name that is not one of herald's.
    #[error("unknown missed-tick policy '{0}': use 'skip' or 'catch-up-one'")]
    Missed(String),
    /// No schedule has this name in this runtime.
    #[error("no cron schedule is named '{0}' here: `Herald::crons` lists them")]
    NotFound(String),
    /// The runtime is shutting down and takes no new schedules.
    #[error("herald is shutting down and takes no new cron schedules")]
    ShuttingDown,
}
