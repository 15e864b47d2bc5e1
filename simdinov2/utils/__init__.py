"""Small shared utilities (schedules, seeds, atomic saves) used by both trees."""
