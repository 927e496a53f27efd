//! A throwaway OpenLDAP directory: `slapd` from Debian's packages on a free
//! loopback port with its own configuration and database. Under `dc=ebb,dc=test`:
//!
//! - `cn=ebb,ou=system`: the account the connector is lent, allowed to change
//!   group memberships and to read the tree;
//! - `uid=svc-report` and `uid=svc-batch` under `ou=services`, each with a password;
//! - groups under `ou=groups`: `db-admins`, and `oncall`, itself a member of
//!   `db-admins` (nesting), with `svc-batch` in it;
//! - `cn=db-password,ou=secrets`: readable only by effective members of
//!   `db-admins`, nested membership included (an OpenLDAP `set` ACL with `member*`).

use anyhow::{Context, bail};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The suffix of the test directory.
pub const BASE: &str = "dc=ebb,dc=test";
/// The connector's bind DN and password.
pub const ADMIN: (&str, &str) = ("cn=ebb,ou=system,dc=ebb,dc=test", "ldap-test-ebb");
/// The directory manager (for the tests' own changes).
const ROOT: (&str, &str) = ("cn=manager,dc=ebb,dc=test", "ldap-test-manager");
/// The service accounts' passwords.
pub const SERVICE_PASSWORD: &str = "ldap-test-service";

pub(crate) fn installed() -> bool {
    std::path::Path::new("/usr/sbin/slapd").exists() && crate::require::on_path("ldapmodify")
}

/// A running directory, stopped and deleted on drop.
#[derive(Debug)]
pub struct Ldap {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Ldap {
    /// Writes a configuration, starts `slapd`, waits until it answers, loads the tree.
    pub fn start() -> anyhow::Result<Self> {
        let port = crate::free_port()?;
        let dir = std::env::temp_dir().join(format!("ebb-ldap-{port}"));
        std::fs::create_dir_all(dir.join("data"))?;
        let groups = format!("ou=groups,{BASE}");
        std::fs::write(
            dir.join("slapd.conf"),
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 include /etc/ldap/schema/nis.schema\n\
                 pidfile {pid}\n\
                 modulepath /usr/lib/ldap\n\
                 moduleload back_mdb\n\
                 database mdb\n\
                 maxsize 10485760\n\
                 suffix \"{BASE}\"\n\
                 rootdn \"{root}\"\n\
                 rootpw {rootpw}\n\
                 directory {data}\n\
                 access to attrs=userPassword\n  by self write\n  by anonymous auth\n  by * none\n\
                 access to dn.subtree=\"ou=secrets,{BASE}\"\n  by set=\"[cn=db-admins,{groups}]/member* & user\" read\n  by * none\n\
                 access to dn.subtree=\"{groups}\" attrs=member\n  by dn.exact=\"{admin}\" write\n  by users read\n\
                 access to *\n  by dn.exact=\"{admin}\" read\n  by users read\n  by anonymous auth\n",
                pid = dir.join("slapd.pid").display(),
                data = dir.join("data").display(),
                root = ROOT.0,
                rootpw = ROOT.1,
                admin = ADMIN.0,
            ),
        )?;
        let child = Command::new("/usr/sbin/slapd")
            .arg("-f")
            .arg(dir.join("slapd.conf"))
            .args(["-h", &format!("ldap://127.0.0.1:{port}/"), "-d", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("slapd is not installed; run scripts/setup.sh")?;
        let ldap = Self { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !crate::wait_for_port(port, Duration::from_millis(100)) {
            if Instant::now() > deadline {
                bail!("slapd did not start on port {port}");
            }
        }
        let service = |uid: &str| {
            format!(
                "dn: uid={uid},ou=services,{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\n\
                 cn: {uid}\nsn: {uid}\nuserPassword: {SERVICE_PASSWORD}\n\n"
            )
        };
        ldap.modify_as_root(&format!(
            "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: ebb\no: ebb\n\n\
             dn: ou=system,{BASE}\nobjectClass: organizationalUnit\nou: system\n\n\
             dn: ou=services,{BASE}\nobjectClass: organizationalUnit\nou: services\n\n\
             dn: {groups}\nobjectClass: organizationalUnit\nou: groups\n\n\
             dn: ou=secrets,{BASE}\nobjectClass: organizationalUnit\nou: secrets\n\n\
             dn: {admin}\nobjectClass: person\ncn: ebb\nsn: ebb\nuserPassword: {adminpw}\n\n\
             {report}{batch}\
             dn: cn=oncall,{groups}\nobjectClass: groupOfNames\ncn: oncall\n\
             member: uid=svc-batch,ou=services,{BASE}\n\n\
             dn: cn=db-admins,{groups}\nobjectClass: groupOfNames\ncn: db-admins\n\
             member: cn=oncall,{groups}\n\n\
             dn: cn=db-password,ou=secrets,{BASE}\nobjectClass: device\ncn: db-password\n\
             description: the database password\n",
            admin = ADMIN.0,
            adminpw = ADMIN.1,
            report = service("svc-report"),
            batch = service("svc-batch"),
        ))
        .context("loading the test tree")?;
        Ok(ldap)
    }

    /// The URL to lend.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// Adds entries or applies changes (LDIF, `ldapmodify -a`) as the manager.
    pub fn modify_as_root(&self, ldif: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut child = Command::new("ldapmodify")
            .args(["-x", "-a", "-H", &self.url(), "-D", ROOT.0, "-w", ROOT.1])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("ldapmodify's stdin")?
            .write_all(ldif.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("ldapmodify: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The DNs in `member` of `group` (a `cn` under `ou=groups`), as the manager.
    pub fn members(&self, group: &str) -> anyhow::Result<Vec<String>> {
        let out = Command::new("ldapsearch")
            .args([
                "-x",
                "-LLL",
                "-o",
                "ldif-wrap=no",
                "-H",
                &self.url(),
                "-D",
                ROOT.0,
                "-w",
                ROOT.1,
            ])
            .args([
                "-b",
                &format!("cn={group},ou=groups,{BASE}"),
                "-s",
                "base",
                "member",
            ])
            .output()?;
        if !out.status.success() {
            bail!("ldapsearch: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("member: "))
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for Ldap {
    fn drop(&mut self) {
        crate::kill_group(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
