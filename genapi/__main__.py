from .cli import main

# Guarded: the engine's spawned child re-imports the main module under another name.
if __name__ == "__main__":
    main()
