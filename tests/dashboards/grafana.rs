//! Reads the Grafana dashboards in `dashboards/`: checks each as Grafana
//! dashboard JSON and lists every PromQL expression with the variables it
//! needs.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::Value;

/// Variables Grafana itself defines.
const BUILTINS: [&str; 12] = [
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__from",
    "__to",
    "__field",
    "__value",
    "__series",
    "__data",
    "__url_time_range",
    "__dashboard",
];

/// What Grafana would put in for its interval variables on a Prometheus
/// scraped every 5 s: `$__rate_interval` is at least four scrapes.
pub const INTERVALS: [(&str, &str); 2] = [("__rate_interval", "1m"), ("__interval", "15s")];

/// One dashboard file.
pub struct Dashboard {
    /// Where it is.
    pub path: PathBuf,
    /// Its JSON.
    pub json: Value,
}

/// One query of one panel.
#[derive(Debug, Clone)]
pub struct Expression {
    /// `file: panel title [refId]`.
    pub name: String,
    /// The PromQL, with Grafana's variables still in it.
    pub expr: String,
}

/// A dashboard's query variable: name and its `label_values(...)` query.
#[derive(Debug, Clone)]
pub struct QueryVariable {
    /// `$name`.
    pub name: String,
    /// `label_values([metric, ]label)`.
    pub query: String,
}

/// Every `dashboards/*.json`.
pub fn load_all() -> Vec<Dashboard> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut dashboards: Vec<Dashboard> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| Dashboard {
            json: serde_json::from_slice(&std::fs::read(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            path,
        })
        .collect();
    dashboards.sort_by(|a, b| a.path.cmp(&b.path));
    dashboards
}

fn variable_names(text: &str) -> BTreeSet<String> {
    let pattern = Regex::new(
        r"\$\{([A-Za-z0-9_]+)(?:[.:][^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)|\[\[([A-Za-z0-9_]+)\]\]",
    )
    .unwrap();
    pattern
        .captures_iter(text)
        .filter_map(|c| c.get(1).or(c.get(2)).or(c.get(3)))
        .map(|m| m.as_str().to_owned())
        .collect()
}

/// Every panel, rows' nested panels included.
fn panels(json: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in json["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

impl Dashboard {
    fn file(&self) -> String {
        self.path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// The problems Grafana (or a reader) would have with this dashboard.
    pub fn problems(&self) -> Vec<String> {
        let file = self.file();
        let json = &self.json;
        let mut problems = Vec::new();
        let mut problem = |text: String| problems.push(format!("{file}: {text}"));
        match json["schemaVersion"].as_u64() {
            Some(v) if v >= 36 => {}
            other => problem(format!("schemaVersion {other:?}: want a number >= 36")),
        }
        for key in ["uid", "title"] {
            if json[key].as_str().is_none_or(str::is_empty) {
                problem(format!("no {key}"));
            }
        }
        let variables = json["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let defined: HashSet<String> = variables
            .iter()
            .filter_map(|v| v["name"].as_str().map(str::to_owned))
            .collect();
        let datasource = variables
            .iter()
            .find(|v| v["name"] == "datasource")
            .cloned()
            .unwrap_or_default();
        if datasource["type"] != "datasource" || datasource["query"] != "prometheus" {
            problem("no `datasource` variable of Prometheus data sources".into());
        }
        let mut ids = HashSet::new();
        for panel in panels(json) {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            match panel["id"].as_u64() {
                Some(id) if ids.insert(id) => {}
                Some(id) => problem(format!("panel id {id} used twice ({title})")),
                None => problem(format!("panel {title:?} has no id")),
            }
            let grid = &panel["gridPos"];
            if ["h", "w", "x", "y"]
                .iter()
                .any(|k| grid[k].as_u64().is_none())
                || grid["x"].as_u64().unwrap_or(0) + grid["w"].as_u64().unwrap_or(0) > 24
            {
                problem(format!("panel {title:?}: bad gridPos {grid}"));
            }
            if panel["type"] == "row" {
                continue;
            }
            let mut sources = vec![&panel["datasource"]];
            sources.extend(
                panel["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| &t["datasource"]),
            );
            for source in sources {
                if source["uid"] != "${datasource}" || source["type"] != "prometheus" {
                    problem(format!(
                        "panel {title:?}: data source {source} is not the ${{datasource}} variable"
                    ));
                }
            }
            if panel["targets"].as_array().is_none_or(Vec::is_empty) {
                problem(format!("panel {title:?} has no query"));
            }
        }
        // Every variable used anywhere is defined or Grafana's own.
        let text = json.to_string();
        for name in variable_names(&text) {
            if !defined.contains(&name) && !BUILTINS.contains(&name.as_str()) {
                problem(format!("${name} is used but not defined"));
            }
        }
        problems
    }

    /// Every query of every panel.
    pub fn expressions(&self) -> Vec<Expression> {
        let file = self.file();
        let mut out = Vec::new();
        for panel in panels(&self.json) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push(Expression {
                    name: format!(
                        "{file}: {} [{}]",
                        panel["title"].as_str().unwrap_or("?"),
                        target["refId"].as_str().unwrap_or("?")
                    ),
                    expr: target["expr"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
        out
    }

    /// The dashboard's query variables.
    pub fn query_variables(&self) -> Vec<QueryVariable> {
        self.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["type"] == "query")
            .map(|v| QueryVariable {
                name: v["name"].as_str().unwrap_or_default().to_owned(),
                query: v["query"]["query"]
                    .as_str()
                    .or(v["query"].as_str())
                    .or(v["definition"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
            })
            .collect()
    }
}

impl Expression {
    /// The non-builtin variables the expression uses.
    pub fn variables(&self) -> BTreeSet<String> {
        variable_names(&self.expr)
            .into_iter()
            .filter(|name| !BUILTINS.contains(&name.as_str()))
            .collect()
    }

    /// The expression with Grafana's intervals and `values` put in.
    pub fn substitute(&self, values: &[(String, String)]) -> String {
        let mut expr = self.expr.clone();
        let all = INTERVALS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain(values.iter().cloned());
        for (name, value) in all {
            expr = expr
                .replace(&format!("${{{name}}}"), &value)
                .replace(&format!("[[{name}]]"), &value);
            let bare = Regex::new(&format!(r"\${}\b", regex::escape(&name))).unwrap();
            expr = bare
                .replace_all(&expr, regex::NoExpand(&value))
                .into_owned();
        }
        expr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_found_in_every_spelling_and_substituted() {
        let e = Expression {
            name: "x".into(),
            expr: r#"rate(m{a="$service",b="${workload}"}[$__rate_interval])"#.into(),
        };
        assert_eq!(
            e.variables().into_iter().collect::<Vec<_>>(),
            ["service", "workload"]
        );
        let values = [
            ("service".to_owned(), "reviews".to_owned()),
            ("workload".to_owned(), "reviews-v2".to_owned()),
        ];
        assert_eq!(
            e.substitute(&values),
            r#"rate(m{a="reviews",b="reviews-v2"}[1m])"#
        );
    }
}
