"""Print README's configuration table from gateway.config.ENV_VARS (keeps them in step)."""

from gateway.config import ENV_VARS


def main() -> None:
    print("| variable | default | meaning |\n|---|---|---|")
    for name, default, meaning in ENV_VARS:
        shown = f"`{default}`" if default else "(empty)"
        print(f"| `{name}` | {shown} | {meaning} |")


if __name__ == "__main__":
    main()
