"""``python -m orl_gym.rewards fetch-weights [--net alex|vgg|all] [--cache-dir DIR]``."""

from orl_gym.rewards.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
