//! The three roles of an audit schema: the owner, the append-only writer and
//! the reader, and the SQL an administrator runs when the migrating role may
//! not create them.

use super::{Schema, is_identifier};
use crate::error::AuditError;

/// The roles of an audit schema.
///
/// | role | may | used by |
/// |---|---|---|
/// | owner | own the tables and functions; the append function runs as it | nobody logs in as it: the migrating role is a member |
/// | writer | call `append_events`, nothing else: no `INSERT`, `UPDATE`, `DELETE`, `TRUNCATE`, no trigger changes | the application (`GRANT <writer> TO app`) |
/// | reader | read the events and the stream heads | the verifier, auditors |
///
/// By default the names are derived from the schema: `<schema>_owner`,
/// `<schema>_writer`, `<schema>_reader` (so `audit_owner`, ... for the
/// default schema), which keeps several audit schemas of one cluster apart.
///
/// ```
/// # #[cfg(feature = "postgres")] {
/// use idempotency_audit::postgres::AuditRoles;
/// let roles = AuditRoles::for_schema("audit").unwrap();
/// assert_eq!((roles.owner(), roles.writer(), roles.reader()), ("audit_owner", "audit_writer", "audit_reader"));
/// assert!(AuditRoles::new("ops_audit", "app_audit", "Auditor").is_err());
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRoles {
    owner: String,
    writer: String,
    reader: String,
}

impl AuditRoles {
    /// Named roles: each 1 to 63 bytes of `[a-z0-9_]`, not starting with a
    /// digit or `pg_`, all different.
    ///
    /// # Errors
    ///
    /// [`AuditError::InvalidRole`] naming the first bad (or repeated) name.
    pub fn new(owner: &str, writer: &str, reader: &str) -> Result<Self, AuditError> {
        for name in [owner, writer, reader] {
            if !is_identifier(name) {
                return Err(AuditError::InvalidRole {
                    name: name.to_owned(),
                });
            }
        }
        if owner == writer || owner == reader || writer == reader {
            let name = if owner == writer || owner == reader {
                owner
            } else {
                writer
            };
            return Err(AuditError::InvalidRole {
                name: name.to_owned(),
            });
        }
        Ok(Self {
            owner: owner.to_owned(),
            writer: writer.to_owned(),
            reader: reader.to_owned(),
        })
    }

    /// `<schema>_owner`, `<schema>_writer`, `<schema>_reader`.
    ///
    /// # Errors
    ///
    /// [`AuditError::InvalidRole`] when a derived name is longer than 63
    /// bytes (a schema name of more than 56): name them with [`AuditRoles::new`].
    pub fn for_schema(schema: &str) -> Result<Self, AuditError> {
        Self::new(
            &format!("{schema}_owner"),
            &format!("{schema}_writer"),
            &format!("{schema}_reader"),
        )
    }

    /// The owner role.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The append-only writer role.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// The reader role.
    pub fn reader(&self) -> &str {
        &self.reader
    }

    /// Substitutes the quoted role names for `{{owner}}`, `{{writer}}` and
    /// `{{reader}}`, and the schema for `{{schema}}`.
    pub(crate) fn apply(&self, schema: &Schema, template: &str) -> String {
        schema
            .apply(template)
            .replace("{{owner}}", &format!("\"{}\"", self.owner))
            .replace("{{writer}}", &format!("\"{}\"", self.writer))
            .replace("{{reader}}", &format!("\"{}\"", self.reader))
    }

    /// The SQL an administrator (a role with `CREATEROLE`) runs once when
    /// the role that migrates, `migrator`, may not create roles itself:
    /// creates the three roles (no login) and makes `migrator` a member of
    /// the owner, so that it can hand the tables over to it.
    pub fn setup_sql(&self, migrator: &str) -> String {
        let migrator = format!("\"{}\"", migrator.replace('"', "\"\""));
        format!(
            "CREATE ROLE \"{o}\" NOLOGIN;\n\
             CREATE ROLE \"{w}\" NOLOGIN;\n\
             CREATE ROLE \"{r}\" NOLOGIN;\n\
             GRANT \"{o}\" TO {migrator};\n\
             -- then, for the application's and the auditors' login roles:\n\
             -- GRANT \"{w}\" TO app;\n\
             -- GRANT \"{r}\" TO auditor;\n",
            o = self.owner,
            w = self.writer,
            r = self.reader,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let r = AuditRoles::for_schema("audit_x").unwrap();
        assert_eq!(r.writer(), "audit_x_writer");
        assert!(matches!(
            AuditRoles::for_schema(&"s".repeat(57)),
            Err(AuditError::InvalidRole { .. })
        ));
        AuditRoles::for_schema(&"s".repeat(56)).unwrap();
        for bad in [
            ("a", "a", "b"),
            ("a", "b", "b"),
            ("a", "b", "a"),
            ("A", "b", "c"),
        ] {
            assert!(AuditRoles::new(bad.0, bad.1, bad.2).is_err(), "{bad:?}");
        }
        let schema = Schema::new("s").unwrap();
        assert_eq!(
            r.apply(&schema, "{{schema}} {{owner}} {{writer}} {{reader}}"),
            "\"s\" \"audit_x_owner\" \"audit_x_writer\" \"audit_x_reader\""
        );
        let sql = r.setup_sql("deploy\"er");
        assert!(
            sql.contains("GRANT \"audit_x_owner\" TO \"deploy\"\"er\";"),
            "{sql}"
        );
    }
}
