"""Course tooling: not for the learner (the runner, the README map, the student build, data and checks)."""
