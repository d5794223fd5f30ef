"""The shared helpers under their historical name: each lives in the module for its job (cli, rng, files,
metrics); this module re-exports them so ``from utils import ...`` keeps working."""
from cli import (DEBUG_ENV, CliParser, UserError, _one_line, acc_type, first_line,  # noqa: F401
                 old_spellings, os_error_message, run_cli, seed_type, weight_type)
from files import (atomic_write, csv_text, load_checkpoint, pickled_global, save_checkpoint, unreadable_reason,  # noqa: F401
                   write_json, write_text)
from metrics import METRICS, hfn, nmse, psnr, ssim, vif  # noqa: F401
from rng import SeedError, check_seed, get_rng_state, seed_everything, set_rng_state  # noqa: F401
