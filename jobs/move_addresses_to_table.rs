//! `move_addresses_to_table`: moves the addresses held as JSON in
//! `users.profile` (`{"addresses": [{"kind": "home", "line": "1 Main St",
//! "city": "Oslo"}, …]}`) into a table of their own, `addresses`, one row per
//! entry, and marks the user with `addresses_moved_at`: one table's rows into
//! another, parsed in Rust, in the batch's transaction. A user whose profile is
//! not that JSON, or has an entry without a `kind` or two of one kind, is
//! rejected with the reason and left as it is.

use std::collections::HashSet;

use datamig_core::prelude::*;

pub struct MoveAddressesToTable;

impl Job for MoveAddressesToTable {
    type Args = NoArgs;

    fn name(&self) -> &'static str {
        "move_addresses_to_table"
    }

    fn description(&self) -> &'static str {
        "move the addresses in users.profile (JSON) to the addresses table, one row per entry"
    }

    fn requires_migration(&self) -> Option<i64> {
        Some(20261204090100) // create_addresses
    }

    fn plan(&self, _args: &NoArgs, _ctx: &PlanContext) -> Result<Plan, String> {
        Ok(Plan {
            source: Source::table("users", "id")
                .columns(&["profile"])
                .filter("profile IS NOT NULL AND addresses_moved_at IS NULL", vec![]),
            step: Step::batch(MoveAddresses),
            checks: vec![
                Check::new(
                    "addresses of users not marked moved",
                    "SELECT count(*) FROM addresses a JOIN users u ON u.id = a.user_id WHERE u.addresses_moved_at IS NULL",
                    Expect::Zero,
                ),
                Check::new(
                    "users with a profile left unmoved (rejected)",
                    "SELECT count(*) FROM users WHERE profile IS NOT NULL AND addresses_moved_at IS NULL",
                    Expect::Report,
                ),
            ],
        })
    }
}

/// A row of the source, read into the job's own type.
#[derive(serde::Deserialize)]
struct User {
    id: i64,
    profile: Option<String>,
}

#[derive(serde::Deserialize)]
struct Profile {
    #[serde(default)]
    addresses: Vec<Entry>,
}

#[derive(Debug, serde::Deserialize)]
struct Entry {
    kind: Option<String>,
    line: String,
    city: String,
}

/// At most this many addresses per user: an address's id is `user_id * 10 + n`.
const MAX_ADDRESSES: usize = 10;

struct MoveAddresses;

impl BatchStep for MoveAddresses {
    type Outside = ();

    async fn outside(&self, _batch: &Batch) -> Result<(), StepError> {
        Ok(())
    }

    async fn write(&self, batch: &Batch, _: &(), tx: &mut BatchTx<'_>) -> Result<(), StepError> {
        let now = Value::Timestamp(chrono::Utc::now().naive_utc().with_nanosecond_zero());
        let mut addresses = Vec::new();
        let mut moved = Vec::new();
        for user in batch.rows_as::<User>()? {
            match entries(user.profile.as_deref().unwrap_or_default()) {
                Ok(entries) => {
                    for (n, e) in entries.into_iter().enumerate() {
                        let id = user.id * 10 + i64::try_from(n).unwrap_or(0);
                        addresses.push(vec![
                            id.into(),
                            user.id.into(),
                            e.kind.into(),
                            e.line.into(),
                            e.city.into(),
                        ]);
                    }
                    moved.push(vec![user.id.into(), now.clone()]);
                }
                Err(reason) => tx.reject(&[user.id.into()], reason),
            }
        }
        tx.insert(
            "addresses",
            &["id", "user_id", "kind", "line", "city"],
            &addresses,
            OnConflict::Fail,
        )
        .await?;
        tx.update("users", &["id"], &["addresses_moved_at"], &moved)
            .await?;
        Ok(())
    }
}

/// A profile's address entries, each with its kind, or why it has none.
fn entries(profile: &str) -> Result<Vec<Entry>, String> {
    let profile: Profile = serde_json::from_str(profile)
        .map_err(|e| format!("the profile is not the expected JSON: {e}"))?;
    if profile.addresses.len() > MAX_ADDRESSES {
        return Err(format!("more than {MAX_ADDRESSES} addresses"));
    }
    let mut kinds = HashSet::new();
    for (n, entry) in profile.addresses.iter().enumerate() {
        match entry.kind.as_deref().map(str::trim) {
            None | Some("") => return Err(format!("address {} has no kind", n + 1)),
            Some(kind) if !kinds.insert(kind.to_string()) => {
                return Err(format!("two addresses of kind {kind}"))
            }
            Some(_) => {}
        }
    }
    Ok(profile.addresses)
}

/// A timestamp to the second: what every database stores alike.
trait ToSecond {
    fn with_nanosecond_zero(self) -> Self;
}

impl ToSecond for chrono::NaiveDateTime {
    fn with_nanosecond_zero(self) -> Self {
        use chrono::Timelike;
        self.with_nanosecond(0).unwrap_or(self)
    }
}

#[cfg(test)]
mod tests {
    use super::entries;

    #[test]
    fn entries_need_a_kind_each_and_one_of_each_kind() {
        let two = r#"{"addresses": [{"kind": "home", "line": "1 Main St", "city": "Oslo"}, {"kind": "work", "line": "2 Quay", "city": "Bergen"}]}"#;
        assert_eq!(entries(two).map(|e| e.len()), Ok(2));
        assert_eq!(entries(r#"{"addresses": []}"#).map(|e| e.len()), Ok(0));
        let kindless = r#"{"addresses": [{"line": "1 Main St", "city": "Oslo"}]}"#;
        assert_eq!(
            entries(kindless).err().as_deref(),
            Some("address 1 has no kind")
        );
        let twice = r#"{"addresses": [{"kind": "home", "line": "a", "city": "b"}, {"kind": "home", "line": "c", "city": "d"}]}"#;
        assert_eq!(
            entries(twice).err().as_deref(),
            Some("two addresses of kind home")
        );
        assert!(entries("not json")
            .unwrap_err()
            .starts_with("the profile is not the expected JSON"));
    }
}
