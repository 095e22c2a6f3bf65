"""Entry point for `pulumi preview` / `pulumi up`: everything lives in infra/."""

from infra import program

program.run()
