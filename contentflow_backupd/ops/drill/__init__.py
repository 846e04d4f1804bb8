"""ops.drill: restore drills (`drill`, formerly `restore-test`)."""
