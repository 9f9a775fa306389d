//! `import -c`: Dockerfile instructions applied to a new image's config,
//! the way `docker import --change` applies them.
//!
//! Only the instructions that change metadata are allowed (CMD, ENTRYPOINT,
//! ENV, EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR). As in a
//! Dockerfile, CMD, ENTRYPOINT and VOLUME take a JSON array or a shell
//! form; ENV and LABEL take `key=value` pairs (or the legacy `key value`);
//! and the arguments of ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME and
//! WORKDIR have quotes removed and `$VAR`/`${VAR}` expanded from the
//! environment set so far.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::image::RunConfig;

/// Why a `-c` instruction cannot be applied. Names the instruction.
#[derive(Debug, thiserror::Error)]
#[error("invalid change {change:?}: {reason}")]
pub struct ChangeError {
    pub change: String,
    pub reason: String,
}

/// Builds the config for an image from `changes`, in order.
/// `os` picks the shell the shell forms run in.
pub fn apply(changes: &[String], os: &str) -> Result<RunConfig, ChangeError> {
    let mut state = Applier {
        config: RunConfig::default(),
        cmd_set: false,
        shell: if os == "windows" {
            vec!["cmd".into(), "/S".into(), "/C".into()]
        } else {
            vec!["/bin/sh".into(), "-c".into()]
        },
    };
    for change in changes {
        state.apply(change).map_err(|reason| ChangeError {
            change: change.clone(),
            reason,
        })?;
    }
    Ok(state.config)
}

const ALLOWED: [&str; 10] = [
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "LABEL",
    "ONBUILD",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Every Dockerfile instruction, for checking ONBUILD triggers.
const DOCKERFILE: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

struct Applier {
    config: RunConfig,
    /// Whether CMD was given before: ENTRYPOINT clears an inherited CMD
    /// only when none was set explicitly, as in a Dockerfile.
    cmd_set: bool,
    shell: Vec<String>,
}

type Outcome = Result<(), String>;

impl Applier {
    fn apply(&mut self, change: &str) -> Outcome {
        let line = change.trim();
        let (keyword, rest) = split_keyword(line);
        let keyword = keyword.to_ascii_uppercase();
        if keyword.is_empty() {
            return Err("the change is empty".into());
        }
        if !ALLOWED.contains(&keyword.as_str()) {
            return Err(format!(
                "{keyword} is not a valid change command (allowed: {})",
                ALLOWED.join(", ")
            ));
        }
        match keyword.as_str() {
            "CMD" => {
                self.config.cmd = Some(self.command(rest));
                self.cmd_set = true;
            }
            "ENTRYPOINT" => {
                self.config.entrypoint = Some(self.command(rest));
                if !self.cmd_set {
                    self.config.cmd = None;
                }
            }
            "ENV" => {
                for (key, value) in self.pairs(rest, "ENV")? {
                    let env = self.config.env.get_or_insert_with(Vec::new);
                    let entry = format!("{key}={value}");
                    let prefix = format!("{key}=");
                    match env.iter_mut().find(|e| e.starts_with(&prefix)) {
                        Some(existing) => *existing = entry,
                        None => env.push(entry),
                    }
                }
            }
            "LABEL" => {
                for (key, value) in self.pairs(rest, "LABEL")? {
                    self.config
                        .labels
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key, value);
                }
            }
            "EXPOSE" => {
                let words = split_words(rest)?;
                if words.is_empty() {
                    return Err("EXPOSE requires at least one argument".into());
                }
                for word in words {
                    for port in ports(&self.expand(&word)?)? {
                        self.config
                            .exposed_ports
                            .get_or_insert_with(BTreeMap::new)
                            .insert(port, Value::Object(Default::default()));
                    }
                }
            }
            "ONBUILD" => {
                let (trigger, _) = split_keyword(rest);
                let trigger = trigger.to_ascii_uppercase();
                match trigger.as_str() {
                    "" => return Err("ONBUILD requires an instruction".into()),
                    "ONBUILD" => {
                        return Err("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into());
                    }
                    "FROM" | "MAINTAINER" => {
                        return Err(format!("{trigger} isn't allowed as an ONBUILD trigger"));
                    }
                    t if !DOCKERFILE.contains(&t) => {
                        return Err(format!("unknown instruction {trigger} in ONBUILD"));
                    }
                    _ => {}
                }
                self.config
                    .on_build
                    .get_or_insert_with(Vec::new)
                    .push(rest.to_string());
            }
            "STOPSIGNAL" => {
                let signal = self.single(rest, "STOPSIGNAL")?;
                check_signal(&signal)?;
                self.config.stop_signal = Some(signal);
            }
            "USER" => {
                self.config.user = Some(self.single(rest, "USER")?);
            }
            "VOLUME" => {
                let list = match json_array(rest) {
                    Some(list) => list,
                    None => split_words(rest)?,
                };
                if list.is_empty() {
                    return Err("VOLUME requires at least one argument".into());
                }
                for volume in list {
                    let volume = self.expand(&volume)?;
                    if volume.trim().is_empty() {
                        return Err("VOLUME specified can not be an empty string".into());
                    }
                    self.config
                        .volumes
                        .get_or_insert_with(BTreeMap::new)
                        .insert(volume, Value::Object(Default::default()));
                }
            }
            "WORKDIR" => {
                let dir = self.single(rest, "WORKDIR")?;
                let current = self.config.working_dir.as_deref().unwrap_or("/");
                self.config.working_dir = Some(workdir(current, &dir));
            }
            _ => unreachable!("every allowed keyword is handled"),
        }
        Ok(())
    }

    /// CMD and ENTRYPOINT: a JSON array as it is, else the shell form.
    fn command(&self, rest: &str) -> Vec<String> {
        if let Some(list) = json_array(rest) {
            return list;
        }
        let mut command = self.shell.clone();
        command.push(rest.to_string());
        command
    }

    /// USER, WORKDIR, STOPSIGNAL: one expanded argument.
    fn single(&self, rest: &str, keyword: &str) -> Result<String, String> {
        if rest.is_empty() {
            return Err(format!("{keyword} requires exactly one argument"));
        }
        self.expand(rest)
    }

    /// ENV and LABEL: `k=v k2="v 2"`, or the legacy `key value...`.
    fn pairs(&self, rest: &str, keyword: &str) -> Result<Vec<(String, String)>, String> {
        let words = split_words(rest)?;
        let Some(first) = words.first() else {
            return Err(format!("{keyword} requires at least one argument"));
        };
        if !first.contains('=') {
            let mut parts = rest.splitn(2, char::is_whitespace);
            let key = parts.next().unwrap_or_default();
            let value = parts.next().map(str::trim_start).unwrap_or_default();
            if value.is_empty() {
                return Err(format!("{keyword} must have two arguments"));
            }
            return Ok(vec![(self.expand(key)?, self.expand(value)?)]);
        }
        let mut pairs = Vec::new();
        for word in &words {
            let Some((key, value)) = word.split_once('=') else {
                return Err(format!(
                    "syntax error - can't find = in {word:?}. Must be of the form: name=value"
                ));
            };
            let key = self.expand(key)?;
            if key.is_empty() {
                return Err(format!("{keyword} names must not be empty"));
            }
            pairs.push((key, self.expand(value)?));
        }
        Ok(pairs)
    }

    /// Removes quotes and expands variables from the environment so far.
    fn expand(&self, word: &str) -> Result<String, String> {
        let env = self.config.env.as_deref().unwrap_or_default();
        Expander { env }.word(word)
    }
}

/// The instruction keyword and the rest of the line.
fn split_keyword(line: &str) -> (&str, &str) {
    let line = line.trim_start();
    match line.find(char::is_whitespace) {
        Some(i) => (&line[..i], line[i..].trim()),
        None => (line, ""),
    }
}

/// A JSON array of strings, when the arguments are one.
fn json_array(rest: &str) -> Option<Vec<String>> {
    if !rest.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(rest).ok()
}

/// Splits on whitespace outside quotes, keeping quotes and escapes in the
/// words for [`Expander`] to process.
fn split_words(rest: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = rest.chars().peekable();
    while let Some(ch) = chars.next() {
        if let Some(q) = quote {
            word.push(ch);
            if ch == q {
                quote = None;
            } else if ch == '\\'
                && q == '"'
                && let Some(next) = chars.next()
            {
                word.push(next);
            }
            continue;
        }
        if ch.is_whitespace() {
            if in_word {
                words.push(std::mem::take(&mut word));
                in_word = false;
            }
            continue;
        }
        in_word = true;
        word.push(ch);
        match ch {
            '\'' | '"' => quote = Some(ch),
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            _ => {}
        }
    }
    if let Some(q) = quote {
        return Err(format!("unmatched {q} quote"));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// The Dockerfile word rules: `'...'` literal, `"..."` with `\"`, `\\`,
/// `\$` and expansion, `\x` outside quotes is `x`, and `$NAME`, `${NAME}`,
/// `${NAME:-default}`, `${NAME:+alternative}` (also without the colon).
struct Expander<'a> {
    env: &'a [String],
}

impl Expander<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
    }

    fn word(&self, word: &str) -> Result<String, String> {
        let chars: Vec<char> = word.chars().collect();
        let mut out = String::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '\'' => {
                    let end = chars[i + 1..].iter().position(|&c| c == '\'').ok_or(
                        "unexpected end of statement while looking for matching single-quote",
                    )?;
                    out.extend(&chars[i + 1..i + 1 + end]);
                    i += end + 2;
                }
                '"' => {
                    i += 1;
                    loop {
                        match chars.get(i) {
                            None => {
                                return Err("unexpected end of statement while looking for matching double-quote".into());
                            }
                            Some('"') => {
                                i += 1;
                                break;
                            }
                            Some('\\') if matches!(chars.get(i + 1), Some('"' | '$' | '\\')) => {
                                out.push(chars[i + 1]);
                                i += 2;
                            }
                            Some('$') => i = self.dollar(&chars, i, &mut out)?,
                            Some(&c) => {
                                out.push(c);
                                i += 1;
                            }
                        }
                    }
                }
                '\\' => {
                    if let Some(&next) = chars.get(i + 1) {
                        out.push(next);
                    }
                    i += 2;
                }
                '$' => i = self.dollar(&chars, i, &mut out)?,
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        Ok(out)
    }

    /// Expands the variable at `chars[i] == '$'`; returns the index after it.
    fn dollar(&self, chars: &[char], i: usize, out: &mut String) -> Result<usize, String> {
        let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
        match chars.get(i + 1) {
            Some('{') => {
                let close = chars[i + 2..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or("missing '}' in a ${...} expansion")?;
                let inner: String = chars[i + 2..i + 2 + close].iter().collect();
                out.push_str(&self.braced(&inner)?);
                Ok(i + 3 + close)
            }
            Some(&c) if is_name(c) => {
                let len = chars[i + 1..].iter().take_while(|&&c| is_name(c)).count();
                let name: String = chars[i + 1..i + 1 + len].iter().collect();
                out.push_str(self.lookup(&name).unwrap_or_default());
                Ok(i + 1 + len)
            }
            _ => {
                out.push('$');
                Ok(i + 1)
            }
        }
    }

    fn braced(&self, inner: &str) -> Result<String, String> {
        let name_len = inner
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(inner.len());
        let (name, op) = inner.split_at(name_len);
        if name.is_empty() {
            return Err(format!("bad substitution ${{{inner}}}"));
        }
        let value = self.lookup(name);
        let (colon, op) = match op.strip_prefix(':') {
            Some(rest) => (true, rest),
            None => (false, op),
        };
        let set = match value {
            Some(v) => !(colon && v.is_empty()),
            None => false,
        };
        match op.chars().next() {
            None if !colon => Ok(value.unwrap_or_default().to_string()),
            Some('-') => {
                if set {
                    Ok(value.unwrap_or_default().to_string())
                } else {
                    self.word(&op[1..])
                }
            }
            Some('+') => {
                if set {
                    self.word(&op[1..])
                } else {
                    Ok(String::new())
                }
            }
            Some('?') => {
                if set {
                    Ok(value.unwrap_or_default().to_string())
                } else {
                    Err(format!("{name}: {}", op[1..].trim()))
                }
            }
            _ => Err(format!("unsupported modifier in ${{{inner}}}")),
        }
    }
}

/// EXPOSE ports: `80`, `80/udp`, `8000-8002/tcp` → `80/tcp`...
fn ports(spec: &str) -> Result<Vec<String>, String> {
    let (range, proto) = match spec.split_once('/') {
        Some((r, p)) => (r, p.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto {proto:?} in port {spec:?}"));
    }
    let parse = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("invalid port {spec:?}"))
    };
    let (start, end) = match range.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(range)?;
            (p, p)
        }
    };
    if end < start {
        return Err(format!("invalid port range {spec:?}"));
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// Linux signal names and numbers STOPSIGNAL accepts.
fn check_signal(signal: &str) -> Result<(), String> {
    const NAMES: [&str; 31] = [
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "WINCH",
    ];
    if let Ok(n) = signal.parse::<u32>() {
        return if (1..=64).contains(&n) {
            Ok(())
        } else {
            Err(format!("invalid signal number {n}"))
        };
    }
    let upper = signal.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let realtime = name
        .strip_prefix("RTMIN")
        .or_else(|| name.strip_prefix("RTMAX"))
        .is_some_and(|rest| rest.is_empty() || rest.parse::<i32>().is_ok_and(|n| n.abs() <= 30));
    if NAMES.contains(&name) || realtime {
        Ok(())
    } else {
        Err(format!("invalid signal: {signal}"))
    }
}

/// WORKDIR: relative paths join the current directory; the result is
/// cleaned like Go's `filepath.Join`.
fn workdir(current: &str, requested: &str) -> String {
    let joined = if requested.starts_with('/') {
        requested.to_string()
    } else {
        format!("/{current}/{requested}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(changes: &[&str]) -> RunConfig {
        let changes: Vec<String> = changes.iter().map(|s| s.to_string()).collect();
        apply(&changes, "linux").unwrap()
    }

    fn fails(change: &str) -> String {
        apply(&[change.to_string()], "linux")
            .unwrap_err()
            .to_string()
    }

    fn strings(list: &[&str]) -> Option<Vec<String>> {
        Some(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn cmd_and_entrypoint_forms() {
        let c = run(&[r#"CMD ["/bin/sh", "-c", "echo hi"]"#]);
        assert_eq!(c.cmd, strings(&["/bin/sh", "-c", "echo hi"]));
        let c = run(&["cmd echo $HOME"]);
        assert_eq!(c.cmd, strings(&["/bin/sh", "-c", "echo $HOME"]));
        let c = run(&["CMD [\"x\"]", "ENTRYPOINT /init"]);
        assert_eq!(c.cmd, strings(&["x"]));
        assert_eq!(c.entrypoint, strings(&["/bin/sh", "-c", "/init"]));
        let c = run(&["ENTRYPOINT [\"/init\"]"]);
        assert_eq!(c.cmd, None);
        let c = apply(&["CMD dir".to_string()], "windows").unwrap();
        assert_eq!(c.cmd, strings(&["cmd", "/S", "/C", "dir"]));
    }

    #[test]
    fn env_forms_and_expansion() {
        let c = run(&[
            "ENV A=1 B=\"two words\" C='$A'",
            "ENV D=$A-${B} E=${MISSING:-dflt} F=${A:+set}",
            "ENV LEGACY value with spaces",
            "ENV A=3",
        ]);
        assert_eq!(
            c.env,
            strings(&[
                "A=3",
                "B=two words",
                "C=$A",
                "D=1-two words",
                "E=dflt",
                "F=set",
                "LEGACY=value with spaces"
            ])
        );
    }

    #[test]
    fn labels_ports_volumes_and_the_rest() {
        let c = run(&[
            "LABEL a=b \"com.x.y\"=\"z z\"",
            "EXPOSE 80 53/udp 8000-8001",
            "VOLUME [\"/data\", \"/logs\"]",
            "VOLUME /cache /tmp/x",
            "USER app:app",
            "WORKDIR /srv",
            "WORKDIR app/../web",
            "STOPSIGNAL SIGQUIT",
            "ONBUILD RUN make",
        ]);
        let labels = c.labels.unwrap();
        assert_eq!(labels["a"], "b");
        assert_eq!(labels["com.x.y"], "z z");
        let ports: Vec<_> = c.exposed_ports.unwrap().into_keys().collect();
        assert_eq!(ports, ["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
        let volumes: Vec<_> = c.volumes.unwrap().into_keys().collect();
        assert_eq!(volumes, ["/cache", "/data", "/logs", "/tmp/x"]);
        assert_eq!(c.user.as_deref(), Some("app:app"));
        assert_eq!(c.working_dir.as_deref(), Some("/srv/web"));
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(c.on_build, strings(&["RUN make"]));
    }

    #[test]
    fn refuses_what_docker_refuses() {
        assert!(fails("RUN make").contains("RUN is not a valid change command"));
        assert!(fails("FROM scratch").contains("not a valid change command"));
        assert!(fails("EXPOSE 99999").contains("invalid port"));
        assert!(fails("EXPOSE 80/foo").contains("invalid proto"));
        assert!(fails("STOPSIGNAL SIGNOPE").contains("invalid signal"));
        assert!(fails("ENV").contains("at least one argument"));
        assert!(fails("ENV A=1 B").contains("can't find ="));
        assert!(fails("ENV A=\"open").contains("unmatched"));
        assert!(fails("LABEL onlykey").contains("two arguments"));
        assert!(fails("ONBUILD ONBUILD RUN x").contains("chaining"));
        assert!(fails("ONBUILD FROM x").contains("isn't allowed"));
        assert!(fails("WORKDIR").contains("exactly one"));
        assert!(fails("VOLUME [\"\"]").contains("empty"));
        assert!(fails("").contains("empty"));
    }
}
