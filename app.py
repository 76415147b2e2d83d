"""The web demo: `python app.py [ckpt_path=...]` (synground-app; see synground/conf/app.yaml), then open http://127.0.0.1:7860."""

from synground.cli import app as main

if __name__ == "__main__":
    main()
