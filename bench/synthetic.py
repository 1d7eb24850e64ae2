"""Synthetic files for the scripts in bench/: made once, kept for the next run."""
import os


def uniform_files(folder, count, size):
    """The paths of `count` files of `size` random bytes in `folder`, each made where
    it is missing or of another size."""
    os.makedirs(folder, exist_ok=True)
    out = [os.path.join(folder, f"f{i:05d}") for i in range(count)]
    for p in out:
        if not os.path.exists(p) or os.path.getsize(p) != size:
            with open(p, "wb") as f:
                f.write(os.urandom(size))
    return out
