//! Removing old releases from a host (`sh/cleanup.sh`). The planner chooses what goes;
//! the script only refuses to remove what is live, previous or protected.

use super::Script;

impl Script {
    /// Remove exactly these release directories (the planner's choice), except whatever
    /// `current` or `.convoy/previous` points at and `protect`.
    pub fn remove_releases(self, remove: &[String], protect: &[String]) -> Self {
        let mut args = vec![protect.join(" ")];
        args.extend(remove.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.step("cleanup", None, "cv_remove_releases", &args)
    }
}
