"""Reports: terminal tables, HTML leaderboards, ranking."""
