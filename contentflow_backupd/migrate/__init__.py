"""The migration guard: Prisma migrations checked, backed up, applied, validated, rolled back."""
