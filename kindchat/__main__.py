"""`python -m kindchat …`: the CLI, also as launchers start it (`deepspeed --module kindchat`)."""

from kindchat.cli import app

if __name__ == "__main__":
    app()
