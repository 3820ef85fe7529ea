//! `redcloud shell`: an interactive loop over the same commands, with line editing, history
//! (kept in `$REDCLOUD_HOME/history`) and tab completion of commands, file names and tags.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use clap::Parser;
use rustyline::completion::{Completer, Pair};
use rustyline::config::Configurer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Editor, Helper, history::DefaultHistory};

use crate::args::{Cli, Command};
use crate::commands::{self, ClientContext};
use crate::session;

/// Commands offered by completion (daemons and the shell itself are not run from the shell).
const COMMANDS: &[&str] = &[
    "register",
    "login",
    "add",
    "list",
    "download",
    "delete",
    "add-tags",
    "delete-tags",
    "history",
    "restore",
    "conflicts",
    "status",
    "help",
    "exit",
];

/// Most history lines kept.
const HISTORY_LINES: usize = 1_000;

/// Names and tags known from the last listing, for completion.
#[derive(Debug, Default, Clone)]
struct Words {
    names: Vec<String>,
    tags: Vec<String>,
}

struct ShellHelper {
    words: Arc<Mutex<Words>>,
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let prefix = &before[start..];
        let first_word = before[..start].trim().is_empty();
        let words = self.words.lock().map(|w| w.clone()).unwrap_or_default();
        let pool: Vec<&str> = if first_word {
            COMMANDS.to_vec()
        } else {
            words
                .names
                .iter()
                .chain(words.tags.iter())
                .map(String::as_str)
                .collect()
        };
        let mut out: Vec<Pair> = pool
            .into_iter()
            .filter(|w| w.starts_with(prefix))
            .map(|w| Pair {
                display: w.to_owned(),
                replacement: w.to_owned(),
            })
            .collect();
        out.sort_by(|a, b| a.display.cmp(&b.display));
        out.dedup_by(|a, b| a.display == b.display);
        Ok((start, out))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}
impl Highlighter for ShellHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        Cow::Borrowed(line)
    }
}
impl Validator for ShellHelper {}
impl Helper for ShellHelper {}

/// Runs the shell until `exit` or end of input.
pub async fn run(cx: &mut ClientContext) -> Result<()> {
    let words = Arc::new(Mutex::new(Words::default()));
    let mut rl: Editor<ShellHelper, DefaultHistory> = Editor::new()?;
    rl.set_helper(Some(ShellHelper {
        words: words.clone(),
    }));
    let _ = rl.set_max_history_size(HISTORY_LINES);
    let history = session::home().ok().map(|h| h.join("history"));
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    refresh(cx, &words).await;
    loop {
        let line = tokio::task::block_in_place(|| rl.readline("redcloud> "));
        let line = match line {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let _ = rl.add_history_entry(trimmed);
        if matches!(trimmed, "exit" | "quit") {
            break;
        }
        let words_in = match split_words(trimmed) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        let argv = std::iter::once("redcloud".to_owned()).chain(words_in);
        match Cli::try_parse_from(argv) {
            Ok(cli) => match cli.command {
                Command::Shell
                | Command::Dev(_)
                | Command::Controller(_)
                | Command::Chunkserver(_)
                | Command::Secret { .. }
                | Command::Ca
                | Command::Completions { .. } => {
                    eprintln!("error: that command is not available inside the shell");
                }
                command => {
                    if let Err(e) = commands::run(cx, command).await {
                        eprintln!("error: {e:#}");
                    }
                    refresh(cx, &words).await;
                }
            },
            // clap renders help and usage errors itself.
            Err(e) => {
                let _ = e.print();
            }
        }
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    Ok(())
}

/// Reloads file names and tags for completion; silent when not logged in or unreachable.
async fn refresh(cx: &mut ClientContext, words: &Arc<Mutex<Words>>) {
    if let Ok(files) = commands::list(cx, Vec::new()).await {
        let mut w = Words::default();
        for f in files {
            w.tags.extend(f.tags.iter().cloned());
            w.names.push(f.name);
        }
        w.tags.sort();
        w.tags.dedup();
        if let Ok(mut guard) = words.lock() {
            *guard = w;
        }
    }
}

/// Splits a line into words, honouring single and double quotes and backslash escapes.
pub fn split_words(line: &str) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (q, '\\') if q != Some('\'') => {
                cur.push(chars.next().ok_or("trailing backslash")?);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (_, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote");
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(
            split_words("add a.txt -t x").unwrap(),
            ["add", "a.txt", "-t", "x"]
        );
        assert_eq!(
            split_words("add 'my file.txt' -t \"two words\"").unwrap(),
            ["add", "my file.txt", "-t", "two words"]
        );
        assert_eq!(split_words(r"add my\ file").unwrap(), ["add", "my file"]);
        assert_eq!(split_words("list ''").unwrap(), ["list", ""]);
        assert!(split_words("add 'oops").is_err());
    }
}

#[cfg(test)]
mod completion_tests {
    use super::*;
    use rustyline::history::DefaultHistory;

    fn complete(line: &str, words: Words) -> Vec<String> {
        let helper = ShellHelper {
            words: Arc::new(Mutex::new(words)),
        };
        let history = DefaultHistory::new();
        let ctx = rustyline::Context::new(&history);
        let (_, pairs) = helper.complete(line, line.len(), &ctx).unwrap();
        pairs.into_iter().map(|p| p.replacement).collect()
    }

    #[test]
    fn completes_commands_then_names_and_tags() {
        let words = Words {
            names: vec!["report.pdf".into(), "photo.jpg".into()],
            tags: vec!["photos".into(), "work".into()],
        };
        assert_eq!(complete("add-", words.clone()), ["add-tags"]);
        assert_eq!(complete("download rep", words.clone()), ["report.pdf"]);
        assert_eq!(complete("list pho", words.clone()), ["photo.jpg", "photos"]);
        assert!(complete("list zzz", words).is_empty());
    }
}
