#!/usr/bin/env python3
"""Write the dev overlay's credential env files (git-ignored) from the *.env.example templates.

Every CHANGE_ME becomes a fresh random value; files that already exist are left alone (use --force to
rotate). The MLflow database password is the same in both places that need it because both read the one
Secret (genexflow-mlflow-db).
"""

import argparse
import secrets
from pathlib import Path

SECRETS = Path(__file__).resolve().parents[1] / "k8s" / "overlays" / "dev" / "secrets"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="overwrite existing env files (rotates credentials)")
    args = ap.parse_args()
    for example in sorted(SECRETS.glob("*.env.example")):
        target = example.with_suffix("")
        if target.exists() and not args.force:
            print(f"kept    {target}")
            continue
        lines = []
        for line in example.read_text().splitlines():
            key, sep, value = line.partition("=")
            lines.append(f"{key}{sep}{secrets.token_urlsafe(24) if value == 'CHANGE_ME' else value}")
        target.write_text("\n".join(lines) + "\n")
        target.chmod(0o600)
        print(f"written {target}")


if __name__ == "__main__":
    main()
