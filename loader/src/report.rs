//! Results: a human summary and one JSON line with every figure.

use serde_json::{Map, Value};

pub struct Report {
    pub scenario: &'static str,
    pub lines: Vec<String>,
    pub figures: Map<String, Value>,
    pub failed: bool,
}

impl Report {
    pub fn new(scenario: &'static str) -> Report {
        let mut figures = Map::new();
        figures.insert("scenario".into(), scenario.into());
        Report {
            scenario,
            lines: Vec::new(),
            figures,
            failed: false,
        }
    }

    /// Record a figure and a human line for it.
    pub fn figure(&mut self, key: &str, value: impl Into<Value>, human: impl Into<String>) {
        self.figures.insert(key.into(), value.into());
        self.lines.push(human.into());
    }

    pub fn value(&mut self, key: &str, value: impl Into<Value>) {
        self.figures.insert(key.into(), value.into());
    }

    pub fn ok(&self) -> bool {
        !self.failed
    }

    pub fn print(&self) {
        println!("== herald-load {}", self.scenario);
        for l in &self.lines {
            println!("  {l}");
        }
        println!("{}", Value::Object(self.figures.clone()));
    }
}

/// Nanoseconds as milliseconds with three decimals.
pub fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e6 * 1000.0).round() / 1000.0
}
